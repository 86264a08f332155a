import com.sun.net.httpserver.HttpExchange;
import com.sun.net.httpserver.HttpServer;
import java.io.IOException;
import java.io.OutputStream;
import java.net.InetAddress;
import java.net.InetSocketAddress;
import java.net.URI;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Arrays;
import java.util.Map;
import java.util.TreeMap;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

/**
 * The Java reference service (docs/receiving.md): JDK only plus Debian's SQLite JDBC driver,
 * the same behaviour as once_service.py. The rules live in OnceGuard; this is the server around it.
 *
 * <pre>
 * javac -d classes OnceGuard.java OnceService.java
 * java -cp classes:/usr/share/java/sqlite-jdbc.jar OnceService --port 0 --db once.db \
 *     [--secret-file KEY] [--work-seconds 2]
 * </pre>
 */
public final class OnceService {
    private static final Pattern ROUTE = Pattern.compile("/(sync|async|operations)/[^/?]+(\\?.*)?");

    private final OnceGuard guard;
    private final long workMillis;
    private final ExecutorService background = Executors.newCachedThreadPool();

    private OnceService(OnceGuard guard, long workMillis) {
        this.guard = guard;
        this.workMillis = workMillis;
    }

    public static void main(String[] args) throws Exception {
        Map<String, String> options = new TreeMap<>(Map.of("--port", "8080", "--work-seconds", "0"));
        for (int i = 0; i + 1 < args.length; i += 2) {
            options.put(args[i], args[i + 1]);
        }
        if (!options.containsKey("--db")) {
            System.err.println("usage: OnceService --db PATH [--port N] [--secret-file PATH] [--work-seconds N]");
            System.exit(2);
        }
        byte[] secret = options.containsKey("--secret-file") ? readKey(Path.of(options.get("--secret-file"))) : null;
        OnceService service = new OnceService(new OnceGuard(options.get("--db"), secret),
            Math.round(Double.parseDouble(options.get("--work-seconds")) * 1000));
        HttpServer server = HttpServer.create(
            new InetSocketAddress(InetAddress.getLoopbackAddress(), Integer.parseInt(options.get("--port"))), 64);
        server.setExecutor(Executors.newCachedThreadPool());   // concurrent requests, as ThreadingHTTPServer
        server.createContext("/", service::handle);
        server.start();
        System.out.println("listening on " + server.getAddress().getPort());
        System.out.flush();
    }

    /** The key's bytes, without the newline `echo KEY > file` leaves. */
    private static byte[] readKey(Path file) throws IOException {
        byte[] key = Files.readAllBytes(file);
        int end = key.length;
        while (end > 0 && (key[end - 1] == '\n' || key[end - 1] == '\r')) {
            end--;
        }
        return Arrays.copyOf(key, end);
    }

    private void handle(HttpExchange exchange) throws IOException {
        OnceGuard.Decision decision;
        try {
            decision = decide(exchange);
        } catch (Exception e) {
            decision = OnceGuard.answer(500, "{\"error\": " + OnceGuard.quote(String.valueOf(e)) + "}");
        }
        try (exchange) {
            send(exchange, decision);
        }
    }

    private OnceGuard.Decision decide(HttpExchange exchange) throws Exception {
        String method = exchange.getRequestMethod();
        URI uri = exchange.getRequestURI();
        // The target as on the request line: the raw (still percent-encoded) path and query.
        String target = uri.getRawPath() + (uri.getRawQuery() != null ? "?" + uri.getRawQuery() : "");
        byte[] body = exchange.getRequestBody().readAllBytes();
        if (method.equals("GET") && target.equals("/_executions")) {
            return OnceGuard.answer(200, guard.executionsJson());
        }
        if (method.equals("GET") && target.equals("/_requests")) {
            return OnceGuard.answer(200, guard.requestsJson());
        }
        Matcher route = ROUTE.matcher(target);
        OnceGuard.Mode mode = !route.matches() ? null : switch (route.group(1)) {
            case "sync" -> OnceGuard.Mode.SYNC;
            case "async" -> OnceGuard.Mode.ASYNC;
            default -> OnceGuard.Mode.POLL;
        };
        if (mode == null || method.equals("GET") != (mode == OnceGuard.Mode.POLL)
                || !(method.equals("GET") || method.equals("POST"))) {
            return OnceGuard.answer(404, "{\"error\": \"not found\"}");
        }
        Map<String, String> headers = new TreeMap<>(String.CASE_INSENSITIVE_ORDER);
        exchange.getRequestHeaders().forEach((name, values) -> headers.put(name, values.get(0)));
        OnceGuard.Decision decision = guard.admit(method, target, headers, body, mode);
        if (!decision.execute()) {
            return decision;
        }
        if (decision.status() == 202) {   // long work: answer now, run it in the background
            background.submit(() -> work(decision.key()));
            return decision;
        }
        return work(decision.key());
    }

    private OnceGuard.Decision work(String key) throws Exception {
        Thread.sleep(workMillis);
        return guard.finish(key);
    }

    private static void send(HttpExchange exchange, OnceGuard.Decision decision) throws IOException {
        byte[] data = decision.body().getBytes(StandardCharsets.UTF_8);
        exchange.getResponseHeaders().set("Content-Type", "application/json");
        decision.headers().forEach(exchange.getResponseHeaders()::set);
        exchange.sendResponseHeaders(decision.status(), data.length);
        try (OutputStream out = exchange.getResponseBody()) {
            out.write(data);
        }
    }
}
