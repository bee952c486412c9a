# ---------------------------------------------------------------------------
# The running cluster: parallel's generics for our nodes

# parallel's internals, named in one place: the generics a SOCKcluster's nodes
# dispatch on, and how a call and the end of a worker are sent.
parallel_ns <- asNamespace("parallel")
internals <- list(
  sendCall = get("sendCall", envir = parallel_ns),
  postNode = get("postNode", envir = parallel_ns)
)


# A node holds only values that do not change (its connection, host, slot, pid,
# session and launch ids): code that hashes or copies a cluster object, as future
# does to tell clusters apart, sees the same cluster for as long as it runs. The
# state of a launch lives in the registry of launches (common.R), by id.
registry <- launches()

state_of <- function(node) {
  S <- registry[[.subset2(node, "launch")]]
  if (is.null(S))
    stop(sprintf(paste(
      "sshcluster: the cluster of worker %d on %s was stopped; source() the file again",
      "for a new one, then register the new parallelCluster again where you registered",
      "this one (doParallel::registerDoParallel(), future::plan())"), node$slot,
      node$host), call. = FALSE)
  S
}

# Waits until one of the nodes has something to read; every second, checks
# that their hosts, and the hosts of every worker with a call outstanding, are
# still there (a call that sent work to a lost worker can never complete,
# whichever worker it waits for first). Returns the index of a readable node.
wait_readable <- function(nodes, cons = lapply(nodes, .subset2, "con")) {
  repeat {
    ready <- socketSelect(cons, timeout = 1)
    if (any(ready)) return(which.max(ready))
    S <- state_of(nodes[[1]])
    relay(S)
    busy <- if (in_parallel_call())
      Filter(function(n) !is.null(n) && S$calls[[n$rank]] > 0L, unclass(S$cluster))
    # (plain lists: c() of a cluster object would be parallelly's c.cluster(), which
    # warns about the nodes the two have in common, every second of the wait)
    check_hosts(c(unclass(nodes), busy))
  }
}

# Whether this wait is part of one of parallel's own calls over the cluster (all of
# parLapply, clusterEvalQ, clusterExport, parLapplyLB, ... go through these): then
# the call needs every worker it sent work to, and a lost one dooms it. (Others,
# future for one, wait for one worker at a time, unrelated to the rest.)
in_parallel_call <- function() {
  heads <- vapply(sys.calls(), function(call)
    if (is.name(call[[1]])) as.character(call[[1]]) else "", "")
  any(heads %in% c("staticClusterApply", "dynamicClusterApply", "clusterCall"))
}

# Signals an error for the first node whose host's ssh session has ended, or
# whose worker its host has reported gone.
check_hosts <- function(nodes) {
  for (node in nodes) {
    S <- state_of(node)
    if (session_ended(S, node$session)) host_lost(node)
    status <- gone(S, node)
    if (!is.na(status))
      worker_lost(node, simpleError(sprintf("its host says the process ended (status %s)",
                                            status)))
  }
}

# The exit status a host reported for a node's worker ("gone SLOT STATUS" on its
# session's stdout), or NA.
gone <- function(S, node) {
  read_reports(S, node$session)
  status <- S$gone[[paste(node$session, node$slot)]]
  if (is.null(status)) NA_character_ else status
}

# Reads the whole lines session id's stdout got since the last look: "gone SLOT
# STATUS" reports are remembered; with worker_output: console, what the workers
# printed is printed here after the host's name (the host's "ready" aside).
read_reports <- function(S, id) {
  f <- paste0(S$sessions[[id]]$file, ".out")
  size <- file.size(f)
  seen <- S$report_sizes[[id]]
  if (is.null(seen)) seen <- 0
  if (is.na(size) || size <= seen) return(invisible())
  con <- file(f, "rb")
  on.exit(close(con))
  seek(con, seen)
  bytes <- readBin(con, "raw", size - seen)
  ends <- which(bytes == as.raw(10L))
  if (!length(ends)) return(invisible())  # (a line still being written)
  S$report_sizes[[id]] <- seen + ends[length(ends)]
  bytes <- bytes[seq_len(ends[length(ends)] - 1L)]
  lines <- strsplit(rawToChar(bytes[bytes != as.raw(0L)]), "\n", fixed = TRUE)[[1]]
  host <- S$config$machines[[S$sessions[[id]]$h]]$host
  for (line in lines) {
    words <- strsplit(line, " ", fixed = TRUE)[[1]]
    if (length(words) == 3L && words[1] == GONE) {
      S$gone[[paste(id, words[2])]] <- words[3]
    } else if (S$console && !identical(line, "ready")) {
      cat("[", host, "] ", line, "\n", sep = "")
    }
  }
  invisible()
}

# With worker_output: console, prints what every session's workers printed so far.
relay <- function(S) if (S$console) for (id in names(S$sessions)) read_reports(S, id)

host_lost <- function(node) {
  S <- state_of(node)
  S$ended[[node$session]] <- TRUE  # (remembered: a later send fails at once)
  same <- Filter(function(n) identical(n$session, node$session), S$cluster)
  fail_node(node, sprintf(
    "sshcluster: lost %s: %s. Its %d worker%s stopped; parallelCluster <- sshcluster_repair() goes on without %s.",
    node$host, sub("[.]+$", "", session_reason(S, node$session)), length(same),
    if (length(same) == 1L) " is" else "s are", if (length(same) == 1L) "it" else "them"))
}

# A worker's connection failed: say which worker, on which host, and why.
worker_lost <- function(node, e) {
  S <- state_of(node)
  # Behind a tunnel, the end of the ssh session closes the worker's connection:
  # give ssh a moment to say why, unless the host has already said the worker
  # itself ended.
  for (i in 1:20) {
    if (session_ended(S, node$session)) host_lost(node)
    if (!is.na(gone(S, node))) break
    Sys.sleep(0.1)
  }
  fail_node(node, sprintf(
    "sshcluster: worker %d on %s (pid %d) stopped: %s. parallelCluster <- sshcluster_repair() replaces it.",
    node$slot, node$host, node$pid, conditionMessage(e)))
}

fail_node <- function(node, message) {
  S <- state_of(node)
  S$lost[[as.character(node$rank)]] <- message
  stop(structure(class = c("sshcluster_error", "error", "condition"),
                 list(message = message, call = NULL, hosts = node$host, rank = node$rank)))
}

# Whether a node's connection is still the one it was: after parallel::stopCluster()
# R gives its number to the next connection opened, a file of the user's, say.
con_ok <- function(con) {
  i <- unclass(con)[1L]
  any(getAllConnections() == i) && identical(getConnection(i), con)
}

# A cluster object whose worker's connection is closed: one from before a repair
# (which replaced that worker), or one that parallel::stopCluster() stopped.
stale <- function(node) {
  S <- registry[[.subset2(node, "launch")]]
  now <- if (!is.null(S)) Filter(function(n) identical(n$rank, node$rank), unclass(S$cluster))
  replaced <- !is.null(S) && !is.null(S$cluster) &&
    !(length(now) && identical(now[[1]]$con, node$con))
  stop(structure(class = c("sshcluster_error", "error", "condition"), list(
    message = sprintf(paste0(
      "sshcluster: the connection to worker %d on %s was closed (%s); ", if (replaced)
        "use the cluster sshcluster_repair() returned (parallelCluster) and register it again where you registered this one: " else
        "source() the file again for a new cluster, then register it again where you registered this one: ",
      "doParallel::registerDoParallel(parallelCluster), future::plan(future::cluster, workers = parallelCluster)"),
      node$slot, node$host, if (replaced) "this cluster object is from before sshcluster_repair(), which replaced it"
      else "parallel::stopCluster()?"),
    call = NULL, hosts = node$host)))
}

# Reads one message; a worker's answer to a call ends that call's wait. (These
# methods run for every task: they keep to a few cheap steps. A failed read or
# write is turned into an error that names the worker by a calling handler, which
# costs a third of what tryCatch() does: worker_lost() signals the new error from
# within the handler, so the original one never reaches the user.)
read_value <- function(node) {
  value <- withCallingHandlers(unserialize(.subset2(node, "con")),
                               error = function(e) worker_lost(node, e))
  type <- .subset2(value, "type")
  if (length(type) == 1L && type == "VALUE") {
    S <- state_of(node)
    r <- .subset2(node, "rank")
    if (S$calls[r] > 0L) S$calls[r] <- 0L
    if (S$console) read_reports(S, .subset2(node, "session"))
    # A task that failed in parallel's own worker loop: its error text (which
    # parallel's calls put in their error) names the worker; the class is kept.
    if (identical(.subset2(value, "success"), FALSE) &&
        inherits(.subset2(value, "value"), "try-error"))
      value$value[1L] <- sub("(\n?)$", sprintf(" [worker %d on %s]\\1", node$slot,
                                                node$host), value$value[1L])
  }
  value
}

# A short call's answer comes back in well under a millisecond: looking for it a
# few hundred times without sleeping answers sooner than going to sleep in the
# kernel and being woken (the sleep costs more than the look). Longer waits sleep.
SPIN <- 300L

# One worker's answer: looked for SPIN times, then waited for (wait_readable).
recvData.sshcluster_node <- function(node) {
  cons <- list(.subset2(node, "con"))
  for (k in seq_len(SPIN)) if (socketSelect(cons, timeout = 0)) return(read_value(node))
  wait_readable(list(node), cons)
  read_value(node)
}

# A wait for whichever worker answers first (parLapplyLB, foreach, ...) does not spin:
# with many workers answering in turn an answer is usually there already, and a spin
# would take a core that the workers on this machine, or its ssh processes, could use.
recvOneData.sshcluster <- function(cl) {
  # (.subset2: no method lookup, once per task)
  i <- wait_readable(cl, lapply(cl, .subset2, "con"))
  list(node = i, value = read_value(cl[[i]]))
}

# (A lost host is noticed by the wait for the answer: checking here too would cost
# every task a look at the disk.)
sendData.sshcluster_node <- function(node, data) {
  con <- .subset2(node, "con")
  if (!con_ok(con)) stale(node)
  type <- .subset2(data, "type")
  if (length(type) == 1L && type == "EXEC") {
    S <- state_of(node)
    if (!is.null(S$ended[[.subset2(node, "session")]])) host_lost(node)
    r <- .subset2(node, "rank")
    if (S$calls[r] > 0L) fail_node(node, sprintf(paste(
      "sshcluster: worker %d on %s has not answered an earlier call (an interrupted one?),",
      "so this call would get that call's results. parallelCluster <- sshcluster_repair()",
      "brings the cluster back in step."), node$slot, node$host))
    S$calls[r] <- 1L
  }
  # A worker that is gone usually still takes the bytes (they wait in the kernel):
  # the wait for its answer is what names it. A big message to a host that is gone
  # fails after STALL_SECONDS without progress, and then names it too.
  withCallingHandlers(serialize(data, con), error = function(e) worker_lost(node, e))
  invisible(NULL)
}

for (method in c("recvData.sshcluster_node", "recvOneData.sshcluster",
                 "sendData.sshcluster_node"))
  registerS3method(sub("[.].*", "", method), sub("^[^.]*[.]", "", method), get(method),
                   envir = parallel_ns)
