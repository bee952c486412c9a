
# ---------------------------------------------------------------------------
# future's resolved() for a worker behind a relay. future looks at a node's
# connection itself: behind a relay that is its host's, shared with the host's other
# workers, and an answer there for another worker would have resolved() read it and
# then wait for its own worker's answer, however long that takes (resolved() must not
# wait: future asks it of every running future before it starts another, and polls
# it). This resolved() first reads what has arrived on the host's connection, without
# waiting longer than future's own poll would, and holds it (relay_hold); while its
# worker has nothing held, the answer is FALSE; what is held for it is read by
# future's own receiveMessageFromWorker(), as future's resolved() would.
# Every other future (other clusters' nodes, one not running) is future's own
# resolved()'s. Put in place (teach_future) when future is loaded.
# future 1.40 and later (whose clusters are backends), or a future without the
# internals this uses (receiveMessageFromWorker(), signalEarly()), is left alone: its
# resolved() may then wait, as it did before.
# ---------------------------------------------------------------------------

# (made by teach_future around future's own resolved(), 'own', which gets every call
# that is not for a worker behind a relay with exactly the arguments it was given)
resolved_relayed <- function(own) function(x, run = TRUE, timeout = NULL, ...) {
  given <- c(list(x), if (!missing(run)) list(run = run),
             if (!missing(timeout)) list(timeout = timeout), list(...))
  node <- relayed_node(x)
  S <- if (!is.null(node)) registry[[.subset2(node, "launch")]]
  if (is.null(S)) return(do.call(own, given))
  ns <- asNamespace("future")
  wait <- timeout
  if (is.null(wait)) {
    wait <- getOption("future.cluster.resolved.timeout",
                      getOption("future.resolved.timeout", 0.01))
    if (is.numeric(wait) && length(wait) == 1L && !is.na(wait) && wait < 0)
      warning("Secret option 'future.resolved.timeout' is negative, which causes ",
              "resolved() to wait until the future is resolved. This feature is only ",
              "used for testing purposes of the future framework and must not be used ",
              "elsewhere", immediate. = TRUE)
  }
  if (!is.numeric(wait) || length(wait) != 1L || is.na(wait)) return(do.call(own, given))
  r <- .subset2(node, "rank")
  # A negative wait: until the answer is there (future's own tests ask for that); its
  # worker's messages are read as value() reads them, what is held first.
  if (wait >= 0) {
    # (a connection that fails: future's own resolved() reads it, and names the host)
    if (!relay_poll(S, node, if (length(S$inbox[[r]])) 0 else wait))
      return(do.call(own, given))
  }
  for (count in seq_len(100L)) {  # (as many messages as future's own loop reads)
    if (wait >= 0 && !length(S$inbox[[r]])) return(FALSE)
    if (inherits(ns$receiveMessageFromWorker(x), "FutureResult")) {
      ns$signalEarly(x, ...)
      return(TRUE)
    }
    if (wait >= 0) relay_poll(S, node, 0)
  }
  FALSE
}

# The node of a running future of a cluster of this launch code's, behind a relay.
relayed_node <- function(x) {
  if (!is.environment(x) || !identical(x$state, "running") || !is.null(x$result))
    return(NULL)
  node <- tryCatch(x$workers[[x$node]], error = function(e) NULL)
  if (inherits(node, "sshcluster_node") && !is.null(.subset2(node, "relay"))) node
}

# Reads every frame that has arrived on a node's relay connection, waiting up to
# 'wait' seconds for the first, and holds each for its worker. FALSE if the
# connection failed.
relay_poll <- function(S, node, wait) {
  cons <- list(.subset2(node, "con"))
  tryCatch({
    if (socketSelect(cons, timeout = wait)) repeat {
      relay_hold(S, node, relay_read(node))
      if (!socketSelect(cons, timeout = 0)) break
    }
    relay_echo(S)  # (what is held: for code that looks at the connections itself)
    TRUE
  }, error = function(e) FALSE)
}

teach_future <- function(...) {
  ns <- asNamespace("future")
  own <- get0("resolved.ClusterFuture", envir = ns, inherits = FALSE)
  # (future 1.40 and later keep a cluster's workers in a backend: not this code's)
  if (!is.function(own) || exists("ClusterFutureBackend", envir = ns, inherits = FALSE) ||
      !is.function(ns$receiveMessageFromWorker) || !is.function(ns$signalEarly) ||
      !all(c("x", "run", "timeout") %in% names(formals(own))))
    return(invisible(FALSE))
  if (!is.null(attr(own, "sshcluster_original"))) own <- attr(own, "sshcluster_original")
  ours <- resolved_relayed(own)
  attr(ours, "sshcluster_original") <- own
  # (future's own code finds its methods in its namespace; other code, in the table)
  locked <- bindingIsLocked("resolved.ClusterFuture", ns)
  if (locked) unlockBinding("resolved.ClusterFuture", ns)
  assign("resolved.ClusterFuture", ours, envir = ns)
  if (locked) lockBinding("resolved.ClusterFuture", ns)
  registerS3method("resolved", "ClusterFuture", ours, envir = ns)
  invisible(TRUE)
}

if (isNamespaceLoaded("future")) teach_future() else
  if (!isTRUE(getOption("sshcluster.future_hook"))) {
    options(sshcluster.future_hook = TRUE)
    setHook(packageEvent("future", "onLoad"), function(...)
      if (is.function(getOption("sshcluster.teach_future")))
        getOption("sshcluster.teach_future")())
  }
options(sshcluster.teach_future = teach_future)
