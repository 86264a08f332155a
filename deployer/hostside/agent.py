"""The agent's old module name (see __init__.py): runs deployer.host.agent."""
from deployer.host.agent import main

if __name__ == "__main__":
    main()
