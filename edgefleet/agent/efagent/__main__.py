"""``python -m efagent`` (``python -m edgefleet.agent.efagent`` on the host): the agent without its zipapp."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
