"""The headless runner behind ``glimpse-enhance run`` and ``glimpse-enhance loop``.

It talks to ComfyUI over HTTP and the /ws websocket only (stdlib urllib + websocket-client, never a ComfyUI import),
so the same command drives a local embedded server, a remote one, or several at once. It imports the library
(glimpse/) for what both sides share (the view-set scan, view names and selections, presets, atomic writes); the
library never imports the runner, and nothing the runner needs before a server starts imports torch. Modules:

* ``workflow``: finding an API workflow, refusing canvas files, the one override table (class_type + input name) and
  the checks of the user's values.
* ``viewset``: finding the view sets under VIEWSET_DIR and checking each one locally (links leaving the set refused).
* ``prepare``: everything decided before any server: options, scans, output folders, views still to do.
* ``manifest``: OUT_DIR/manifest.json and the params hash that makes reruns skip finished views.
* ``pool``: the jobs (one per set) and the pool of chunks waiting for a server.
* ``history``: a finished prompt's outputs by view, its server time, the run's timing.
* ``client``: the HTTP/websocket client and its error kinds.
* ``embedded``: starting and stopping a ComfyUI from COMFYUI_PATH when no ``--server`` is given.
* ``signals``: SIGINT/SIGTERM end a run cleanly, whatever the inherited disposition.
* ``progress``: the stderr progress line (views done/total, s/view, ETA).
* ``run``: one run over one set or a folder of sets, chunked, resumable, spread over servers.
* ``loop``: rounds of enhance -> refit -> render with the user's commands.
* ``fleet``: many sets over many servers on Ray (the optional ``fleet`` extra; nothing else imports Ray), with
  ``fleet_plan`` (which set goes where, retries, fleet.json) and ``fleet_actor`` (one server running ``run`` per set).
"""
