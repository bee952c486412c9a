
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
# A future whose internals differ (no receiveMessageFromWorker(), signalEarly()) is
# left alone: its resolved() may then wait, as it did before.
# ---------------------------------------------------------------------------

resolved_relayed <- function(x, run = TRUE, timeout = NULL, ...) {
  ns <- asNamespace("future")
  own <- attr(get("resolved.ClusterFuture", envir = ns), "sshcluster_original")
  node <- relayed_node(x)
  S <- if (!is.null(node)) registry[[.subset2(node, "launch")]]
  if (is.null(timeout)) timeout <- getOption("future.cluster.resolved.timeout",
                                             getOption("future.resolved.timeout", 0.01))
  # (a negative timeout: future's own tests wait for the answer)
  if (is.null(S) || !is.numeric(timeout) || timeout < 0)
    return(own(x, run = run, timeout = timeout, ...))
  r <- .subset2(node, "rank")
  # (a connection that fails: future's own resolved() reads it, and names the host)
  if (!relay_poll(S, node, if (length(S$inbox[[r]])) 0 else timeout))
    return(own(x, run = run, timeout = timeout, ...))
  for (count in seq_len(100L)) {  # (as many messages as future's own loop reads)
    if (!length(S$inbox[[r]])) return(FALSE)
    if (inherits(ns$receiveMessageFromWorker(x), "FutureResult")) {
      ns$signalEarly(x, ...)
      return(TRUE)
    }
    relay_poll(S, node, 0)
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
    TRUE
  }, error = function(e) FALSE)
}

teach_future <- function(...) {
  ns <- asNamespace("future")
  own <- get0("resolved.ClusterFuture", envir = ns, inherits = FALSE)
  if (!is.function(own) || !is.function(ns$receiveMessageFromWorker) ||
      !is.function(ns$signalEarly) || !all(c("x", "timeout") %in% names(formals(own))))
    return(invisible(FALSE))
  ours <- resolved_relayed
  attr(ours, "sshcluster_original") <-
    if (is.null(attr(own, "sshcluster_original"))) own else attr(own, "sshcluster_original")
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
