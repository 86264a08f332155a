import java.nio.charset.StandardCharsets;
import java.security.GeneralSecurityException;
import java.security.MessageDigest;
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;
import java.util.HexFormat;
import java.util.Map;
import java.util.UUID;
import java.util.regex.Pattern;
import javax.crypto.Mac;
import javax.crypto.spec.SecretKeySpec;

/**
 * The core of the Java reference service (docs/receiving.md): verify the v2 signature, fence on
 * the epoch, claim the Idempotency-Key -- the same rules and the same SQLite schema as
 * once_service.py.
 *
 * <p>It takes a request's method, target, headers and body and returns a {@link Decision}; it
 * knows nothing about com.sun.net.httpserver, so it drops into a servlet Filter or a Spring
 * HandlerInterceptor unchanged: in doFilter/preHandle call {@link #admit}; unless the decision
 * says {@code execute()}, write its status, headers and body and stop the chain; otherwise let
 * the handler run and then call {@link #finish} (for long work: answer the 202 first and call
 * finish from the background job). Headers must be a case-insensitive map, e.g. a
 * {@code TreeMap<>(String.CASE_INSENSITIVE_ORDER)} holding the first value of each header.
 */
public final class OnceGuard {
    public enum Mode { SYNC, ASYNC, POLL }

    /** execute: the caller owns the key (null for a legacy request without one): run the work, then finish. */
    public record Decision(int status, String body, Map<String, String> headers, boolean execute, String key) {}

    private static final Pattern TIMESTAMP = Pattern.compile("[0-9]{1,12}");
    // 18 digits: an epoch (milliseconds) always fits a long, here and in SQLite.
    private static final Pattern EPOCH = Pattern.compile("[0-9]{1,18}");
    private static final String[] SCHEMA = {
        "CREATE TABLE IF NOT EXISTS epochs (job TEXT PRIMARY KEY, epoch INTEGER NOT NULL)",
        "CREATE TABLE IF NOT EXISTS runs (key TEXT PRIMARY KEY, state TEXT NOT NULL CHECK (state IN ('running', 'done')),"
            + " status INTEGER, body TEXT, location TEXT UNIQUE, started REAL NOT NULL)",
        "CREATE TABLE IF NOT EXISTS executions (key TEXT PRIMARY KEY, count INTEGER NOT NULL)",
        "CREATE TABLE IF NOT EXISTS requests (id INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT, epoch INTEGER,"
            + " method TEXT NOT NULL, path TEXT NOT NULL, answered INTEGER NOT NULL)",
    };

    private final String url;
    private final byte[] secret;

    /** secret: null to accept unsigned requests (a service that has no key configured). */
    public OnceGuard(String dbPath, byte[] secret) throws SQLException {
        this.url = "jdbc:sqlite:" + dbPath;
        this.secret = secret;
        try (Connection db = connect(); Statement statement = db.createStatement()) {
            statement.execute("PRAGMA journal_mode=WAL");
            for (String sql : SCHEMA) {
                statement.execute(sql);
            }
        }
    }

    public static boolean verifyV2(byte[] key, String method, String target, Map<String, String> headers, byte[] body) {
        String stamp = headers.getOrDefault("X-Deployer-Timestamp", "");
        if (!TIMESTAMP.matcher(stamp).matches()
                || Math.abs(System.currentTimeMillis() / 1000.0 - Long.parseLong(stamp)) > 300) {
            return false;
        }
        String job = headers.getOrDefault("X-Deployer-Job", ""), slot = headers.getOrDefault("X-Deployer-Slot", "");
        String idempotencyKey = headers.getOrDefault("Idempotency-Key", "");
        if (!idempotencyKey.isEmpty() && !idempotencyKey.equals(job + "/" + slot)) {
            return false;   // the slot is signed as the key's tail: a re-aimed X-Deployer-Slot is refused
        }
        String message = String.join("\n", "v2", method, target, stamp,
            headers.getOrDefault("X-Deployer-Run-Id", ""), headers.getOrDefault("X-Deployer-Job", ""),
            headers.getOrDefault("Idempotency-Key", ""), headers.getOrDefault("X-Deployer-Epoch", ""),
            HexFormat.of().formatHex(sha256(body)));
        byte[] expected = ("v2=" + HexFormat.of().formatHex(hmac(key, message))).getBytes(StandardCharsets.UTF_8);
        byte[] given = headers.getOrDefault("X-Deployer-Signature-V2", "").getBytes(StandardCharsets.UTF_8);
        return MessageDigest.isEqual(expected, given);   // constant time
    }

    /** Verify, then fence and claim in one transaction. mode: POLL for GET /operations/{id}. */
    public Decision admit(String method, String target, Map<String, String> headers, byte[] body, Mode mode)
            throws SQLException {
        String epochText = headers.getOrDefault("X-Deployer-Epoch", "");
        if (!epochText.isEmpty() && !EPOCH.matcher(epochText).matches()) {
            return answer(400, "{\"error\": \"bad epoch\"}");
        }
        String job = headers.getOrDefault("X-Deployer-Job", "");
        String key = headers.getOrDefault("Idempotency-Key", "");
        String claimed = key.isEmpty() ? null : key;   // null: a legacy caller, executed every time
        Long epoch = epochText.isEmpty() ? null : Long.valueOf(epochText);
        if (secret != null && !verifyV2(secret, method, target, headers, body)) {
            return inTransaction(db -> log(db, claimed, epoch, method, target, answer(401, "{\"error\": \"bad signature\"}")));
        }
        return inTransaction(db -> {
            Decision fenced = fence(db, job, epoch);
            return log(db, claimed, epoch, method, target, fenced != null ? fenced : claim(db, claimed, target, mode));
        });
    }

    /** Count the execution and store the answer every later request for the key gets. */
    public Decision finish(String key) throws SQLException {
        String counted = key == null ? "-" : key;
        return inTransaction(db -> {
            update(db, "INSERT INTO executions VALUES (?, 1) ON CONFLICT (key) DO UPDATE SET count = count + 1", counted);
            long count = queryLong(db, "SELECT count FROM executions WHERE key = ?", counted);
            String body = "{\"code\": 0, \"key\": " + quote(counted) + ", \"executions\": " + count + "}";
            if (key != null) {
                update(db, "UPDATE runs SET state = 'done', status = ?, body = ? WHERE key = ?", 200, body, key);
            }
            return new Decision(200, body, Map.of(), false, key);
        });
    }

    private Decision fence(Connection db, String job, Long epoch) throws SQLException {
        if (epoch == null || job.isEmpty()) {
            return null;
        }
        Long stored = queryLong(db, "SELECT epoch FROM epochs WHERE job = ?", job);
        if (stored != null && stored > epoch) {
            // X-Deployer-Epoch on a 409 tells the trigger "you lost the job", as opposed to
            // "your earlier attempt is still running" (a 409 without it).
            return new Decision(409, "{\"error\": \"fenced\", \"job\": " + quote(job) + ", \"epoch\": " + stored
                + ", \"yours\": " + epoch + "}", Map.of("X-Deployer-Epoch", stored.toString()), false, null);
        }
        update(db, "INSERT INTO epochs VALUES (?, ?) ON CONFLICT (job) DO UPDATE SET epoch = max(epoch, excluded.epoch)",
            job, epoch);
        return null;
    }

    private Decision claim(Connection db, String key, String target, Mode mode) throws SQLException {
        if (mode == Mode.POLL) {   // never claims, only reads
            return poll(db, target);
        }
        if (key == null) {
            return new Decision(200, "", Map.of(), true, null);
        }
        String location = mode == Mode.ASYNC ? "/operations/" + UUID.randomUUID().toString().replace("-", "") : null;
        // The primary key is the claim: whoever inserts the row runs the work, once.
        if (update(db, "INSERT INTO runs (key, state, location, started) VALUES (?, 'running', ?, ?) "
                + "ON CONFLICT (key) DO NOTHING", key, location, System.currentTimeMillis() / 1000.0) == 1) {
            return location != null ? accepted(key, location, true) : new Decision(200, "", Map.of(), true, key);
        }
        try (PreparedStatement query = prepare(db, "SELECT state, status, body, location FROM runs WHERE key = ?", key);
             ResultSet row = query.executeQuery()) {
            row.next();
            if (row.getString(1).equals("done")) {
                return new Decision(row.getInt(2), row.getString(3), Map.of("Idempotent-Replayed", "true"), false, key);
            }
            if (row.getString(4) != null) {
                return accepted(key, row.getString(4), false);
            }
            return new Decision(409, "{\"error\": \"in progress\", \"key\": " + quote(key) + "}",
                Map.of("Retry-After", "1"), false, key);
        }
    }

    private Decision poll(Connection db, String target) throws SQLException {
        try (PreparedStatement query = prepare(db, "SELECT key, state, status, body FROM runs WHERE location = ?", target);
             ResultSet row = query.executeQuery()) {
            if (!row.next()) {
                return answer(404, "{\"error\": \"no such operation\"}");
            }
            if (row.getString(2).equals("running")) {
                return new Decision(202, running(row.getString(1)), Map.of("Retry-After", "1"), false, null);
            }
            return new Decision(row.getInt(3), row.getString(4), Map.of(), false, null);
        }
    }

    private static Decision accepted(String key, String location, boolean execute) {
        return new Decision(202, running(key), Map.of("Location", location, "Retry-After", "1"), execute, key);
    }

    private static String running(String key) {
        return "{\"state\": \"running\", \"key\": " + quote(key) + "}";
    }

    static Decision answer(int status, String body) {
        return new Decision(status, body, Map.of(), false, null);
    }

    private static Decision log(Connection db, String key, Long epoch, String method, String target, Decision decision)
            throws SQLException {
        update(db, "INSERT INTO requests (key, epoch, method, path, answered) VALUES (?, ?, ?, ?, ?)",
            key == null ? "-" : key, epoch, method, target, decision.status());
        return decision;
    }

    /** GET /_executions, for tests: {"key": count, ...}. */
    public String executionsJson() throws SQLException {
        StringBuilder out = new StringBuilder("{");
        try (Connection db = connect(); Statement statement = db.createStatement();
             ResultSet row = statement.executeQuery("SELECT key, count FROM executions ORDER BY key")) {
            while (row.next()) {
                out.append(out.length() > 1 ? ", " : "").append(quote(row.getString(1))).append(": ").append(row.getLong(2));
            }
        }
        return out.append("}").toString();
    }

    /** GET /_requests, for tests: [{"key", "epoch", "method", "path", "answered"}, ...]. */
    public String requestsJson() throws SQLException {
        StringBuilder out = new StringBuilder("[");
        try (Connection db = connect(); Statement statement = db.createStatement();
             ResultSet row = statement.executeQuery("SELECT key, epoch, method, path, answered FROM requests ORDER BY id")) {
            while (row.next()) {
                long epoch = row.getLong(2);
                out.append(out.length() > 1 ? ", " : "")
                    .append("{\"key\": ").append(quote(row.getString(1)))
                    .append(", \"epoch\": ").append(row.wasNull() ? "null" : Long.toString(epoch))
                    .append(", \"method\": ").append(quote(row.getString(3)))
                    .append(", \"path\": ").append(quote(row.getString(4)))
                    .append(", \"answered\": ").append(row.getInt(5)).append("}");
            }
        }
        return out.append("]").toString();
    }

    // --- plumbing -------------------------------------------------------------------------------

    private interface Work<T> {
        T run(Connection db) throws SQLException;
    }

    /** BEGIN IMMEDIATE takes the write lock before the reads: two duplicates cannot both read
     *  "no row" and both insert; the second waits (busy_timeout) and then sees the first's claim. */
    private <T> T inTransaction(Work<T> work) throws SQLException {
        try (Connection db = connect(); Statement statement = db.createStatement()) {
            statement.execute("BEGIN IMMEDIATE");
            try {
                T result = work.run(db);
                statement.execute("COMMIT");
                return result;
            } catch (SQLException | RuntimeException e) {
                statement.execute("ROLLBACK");
                throw e;
            }
        }
    }

    private Connection connect() throws SQLException {
        Connection db = DriverManager.getConnection(url);
        try (Statement statement = db.createStatement()) {
            statement.execute("PRAGMA busy_timeout = 30000");
        }
        return db;
    }

    private static PreparedStatement prepare(Connection db, String sql, Object... values) throws SQLException {
        PreparedStatement statement = db.prepareStatement(sql);
        for (int i = 0; i < values.length; i++) {
            statement.setObject(i + 1, values[i]);
        }
        return statement;
    }

    private static int update(Connection db, String sql, Object... values) throws SQLException {
        try (PreparedStatement statement = prepare(db, sql, values)) {
            return statement.executeUpdate();
        }
    }

    private static Long queryLong(Connection db, String sql, Object... values) throws SQLException {
        try (PreparedStatement statement = prepare(db, sql, values); ResultSet row = statement.executeQuery()) {
            return row.next() ? row.getLong(1) : null;
        }
    }

    /** A JSON string as Python's json.dumps writes it (ASCII only), so both services answer byte for byte alike. */
    static String quote(String text) {
        StringBuilder out = new StringBuilder("\"");
        for (char c : text.toCharArray()) {
            switch (c) {
                case '"' -> out.append("\\\"");
                case '\\' -> out.append("\\\\");
                case '\n' -> out.append("\\n");
                case '\r' -> out.append("\\r");
                case '\t' -> out.append("\\t");
                case '\b' -> out.append("\\b");
                case '\f' -> out.append("\\f");
                default -> out.append(c < 0x20 || c > 0x7e ? String.format("\\u%04x", (int) c) : String.valueOf(c));
            }
        }
        return out.append('"').toString();
    }

    private static byte[] sha256(byte[] data) {
        try {
            return MessageDigest.getInstance("SHA-256").digest(data);
        } catch (GeneralSecurityException e) {
            throw new IllegalStateException(e);
        }
    }

    private static byte[] hmac(byte[] key, String message) {
        try {
            Mac mac = Mac.getInstance("HmacSHA256");
            mac.init(new SecretKeySpec(key, "HmacSHA256"));
            return mac.doFinal(message.getBytes(StandardCharsets.UTF_8));
        } catch (GeneralSecurityException e) {
            throw new IllegalStateException(e);
        }
    }
}
