"""The wiring: the CLI, the Prefect flows and tasks, the cluster, the API server.

Every process that runs fidoflow's flows or tasks imports this package, so this is where the
one process-wide logging choice is made: a log handler that fails (Prefect's API log worker
while the API server restarts, say) stays silent instead of writing its error to the terminal
(``logging.raiseExceptions``, the standard library's switch for production); what it could not
send is in the log file and the server's database once the server is back.
"""

import logging

logging.raiseExceptions = False
