"""Several processes of one service: ``service serve --workers N`` (``workers.count``).

One process is one event loop on one core; N workers use N cores on one
host. ``workers.count = 1`` (the default) runs the service in this process,
with none of this package on the way; anything else makes
:func:`service.runtime.lifecycle.run_service` the supervisor:

* :mod:`.supervisor`: binds the shared ports, starts and restarts the workers,
  passes signals on, decides the exit code;
* :mod:`.link`: the worker's side (its sockets, its control channel);
* :mod:`.admin` and :mod:`.exposition`: the supervisor's admin port, with one
  ``/metrics`` for the whole service and ``/workers``;
* :mod:`.count`: how many workers ``0`` means; :mod:`.slots`: one worker's state.
"""
