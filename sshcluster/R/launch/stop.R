# ---------------------------------------------------------------------------
# Stopping

# Tells every worker to stop, closes its connection, then ends the sessions.
stop_cluster <- function(S) {
  nodes <- Filter(function(node) !is.null(node) && con_ok(node$con), unclass(S$cluster))
  for (node in nodes) {
    # (not to a host that is gone, nor into a full buffer: that could block)
    if (!session_ended(S, node$session) &&
        isTRUE(socketSelect(list(node$con), write = TRUE, timeout = 0)))
      try(internals$postNode(node, "DONE"), silent = TRUE)
  }
  # (after every DONE: the nodes behind a host's relay share its connection)
  for (node in nodes) if (con_ok(node$con)) try(close(node$con), silent = TRUE)
  close_bulk(S, names(S$bulk))
  S$sent <- NULL
  S$cluster <- NULL
  shutdown(S, grace = 2)
  if (belongs(get0("parallelCluster", envir = globalenv(), inherits = FALSE), S))
    rm("parallelCluster", envir = globalenv())
}

# Ends the supervisor (and with it every session; each host then stops what is
# left of its workers), the listening socket and the launch directory.
# 'grace' seconds are left for the sessions to end by themselves.
# (Only the pipe and the socket that are still ours: after the user's
# closeAllConnections() their numbers may be files of the user's; supervisor_ok().)
shutdown <- function(S, grace = 1) {
  if (supervisor_ok(S)) {
    # (tried again when an error cut it short: a session's setTimeLimit() signals again
    # and again once reached, also here; without the word, the close below would wait
    # for ever on a supervisor whose pipe a forked process still holds)
    for (i in 1:3)
      if (!inherits(try(supervise(S, paste("stop", grace)), silent = TRUE), "try-error") ||
          !supervisor_ok(S)) break
    try(close(S$supervisor), silent = TRUE)  # waits for the supervisor to end
  }
  S$supervisor <- NULL
  if (!is.null(S$listener) && con_ok(S$listener)) try(close(S$listener), silent = TRUE)
  S$listener <- NULL
  close_bulk(S, names(S$bulk))
  S$sent <- NULL
  if (isTRUE(S$console) && !is.null(S$dir)) try(relay(S), silent = TRUE)
  if (!is.null(S$dir)) unlink(S$dir, recursive = TRUE)
  S$dir <- NULL
  if (!is.null(S$id) && exists(S$id, envir = registry, inherits = FALSE))
    rm(list = S$id, envir = registry)
  invisible()
}
