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
in_parallel_call <- function()
  any(call_heads() %in% c("staticClusterApply", "dynamicClusterApply", "clusterCall"))

# The names of the functions on the call stack (parallel::clusterCall(...) as
# clusterCall: users call parallel's functions either way).
call_heads <- function() vapply(sys.calls(), function(call) {
  f <- call[[1L]]
  if (is.call(f) && length(f) == 3L && (identical(f[[1L]], quote(`::`)) ||
                                        identical(f[[1L]], quote(`:::`)))) f <- f[[3L]]
  if (is.name(f)) as.character(f) else ""
}, "")

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
  # (as bytes: a line that is not valid text here, Latin-1 in a UTF-8 session, would
  # make the whole piece NA, and a "gone" report in it would be lost)
  lines <- strsplit(rawToChar(bytes[bytes != as.raw(0L)]), "\n", fixed = TRUE,
                    useBytes = TRUE)[[1]]
  host <- S$config$machines[[S$sessions[[id]]$h]]$host
  for (line in lines) {
    words <- strsplit(line, " ", fixed = TRUE, useBytes = TRUE)[[1]]
    if (length(words) == 3L && words[1] == GONE) {
      S$gone[[paste(id, words[2])]] <- words[3]
    } else if (S$console && !identical(line, "ready")) {
      if (nzchar(S$log_dir)) {
        cat(line, "\n", sep = "", append = TRUE,
            file = file.path(S$log_dir, paste0(gsub("[^A-Za-z0-9._-]", "_", host), ".log")))
      } else {
        cat("[", host, "] ", line, "\n", sep = "")
      }
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
  # (a host this primary gave up itself: its reason, not that of the ssh it ended)
  why <- S$broken[[node$session]]
  if (is.null(why)) why <- session_reason(S, node$session)
  fail_node(node, sprintf(
    "sshcluster: lost %s: %s. Its %d worker%s stopped; parallelCluster <- sshcluster_repair() goes on without %s.",
    node$host, sub("[.]+$", "", why), length(same),
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
    node$slot, node$host, if (is.na(node$pid)) S$pids[node$rank] else node$pid,
    conditionMessage(e)))
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
# (which replaced that worker, or stopped it and was interrupted before it started it
# again), or one that parallel::stopCluster() stopped.
stale <- function(node) {
  S <- registry[[.subset2(node, "launch")]]
  if (!is.null(S) && !supervisor_ok(S))
    stop(structure(class = c("sshcluster_error", "error", "condition"), list(
      message = sprintf("%s (the connection to worker %d on %s is one of them)",
                        SUPERVISOR_CLOSED, node$slot, node$host),
      call = NULL, hosts = node$host)))
  now <- if (!is.null(S)) Filter(function(n) identical(n$rank, node$rank), unclass(S$cluster))
  replaced <- !is.null(S) && !is.null(S$cluster) &&
    !(length(now) && identical(now[[1]]$con, node$con))
  if (replaced && !length(now) && isTRUE(S$repairing))
    stop(structure(class = c("sshcluster_error", "error", "condition"), list(
      message = sprintf(paste(
        "sshcluster: the connection to worker %d on %s was closed by an sshcluster_repair()",
        "that did not finish (interrupted?); parallelCluster <- sshcluster_repair() starts",
        "it again"), node$slot, node$host),
      call = NULL, hosts = node$host)))
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
read_value <- function(node) received(node, withCallingHandlers(
  unserialize(.subset2(node, "con")), error = function(e) worker_lost(node, e)))

# What every answer goes through, read straight or through a host's relay.
received <- function(node, value) {
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
  if (!is.null(.subset2(node, "relay"))) return(relay_recv(node))
  cons <- list(.subset2(node, "con"))
  S <- state_of(node)
  # (a broadcast's record is for its own call, whose sends are done once it reads: the
  # serialized value is not kept longer)
  if (!is.null(S$sent)) S$sent <- NULL
  # (not while other workers have calls to answer: they may need the core)
  spin <- if (sum(S$calls) > 1L) 0L else SPIN
  for (k in seq_len(spin)) if (socketSelect(cons, timeout = 0)) return(read_value(node))
  wait_readable(list(node), cons)
  read_value(node)
}

# A wait for whichever worker answers first (parLapplyLB, foreach, ...) does not spin:
# with many workers answering in turn an answer is usually there already, and a spin
# would take a core that the workers on this machine, or its ssh processes, could use.
recvOneData.sshcluster <- function(cl) {
  # (.subset2: no method lookup, once per task)
  cons <- lapply(cl, .subset2, "con")
  S <- state_of(cl[[1L]])
  if (!S$relayed) {
    if (!is.null(S$sent)) S$sent <- NULL
    i <- wait_readable(cl, cons)
    return(list(node = i, value = read_value(cl[[i]])))
  }
  ranks <- vapply(cl, .subset2, 1L, "rank")
  held <- which(lengths(S$inbox[ranks]) > 0L)
  if (length(held)) return(list(node = held[1L], value = relay_held(S, cl[[held[1L]]])))
  S$sent <- NULL
  repeat {
    i <- wait_readable(cl, cons)
    node <- cl[[i]]
    if (is.null(.subset2(node, "relay"))) return(list(node = i, value = read_value(node)))
    f <- relay_read(node)
    j <- match(S$first[.subset2(node, "h")] + f$slot, ranks)
    if (f$slot > 0L && !is.na(j)) {
      value <- received(cl[[j]], unserialize(f$message))
      relay_echo(S)
      return(list(node = j, value = value))
    }
    relay_hold(S, node, f)
  }
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
  # (parent.frame(3): the frame of the call that sent it, through postNode() and
  # sendCall(): clusterCall()'s, for one; a broadcast is one such call's)
  if (!is.null(.subset2(node, "relay"))) relay_send(node, data, parent.frame(3))
  else if (!is.null(.subset2(node, "lane"))) {
    # (the usual case, a small message with no broadcast under way, written here)
    m <- if (is.null(registry[[.subset2(node, "launch")]]$sent))
      serialize(data, NULL, xdr = FALSE)
    if (is.null(m) || length(m) >= BULK_BYTES) lane_send(node, data, parent.frame(3), m)
    else withCallingHandlers(writeBin(m, con), error = function(e) worker_lost(node, e))
  } else withCallingHandlers(serialize(data, con, xdr = FALSE),
                             error = function(e) worker_lost(node, e))
  invisible(NULL)
}

# A message to a worker with a lane (its own connection, besides its host's relay's):
# a small one goes on the lane; a big one (BULK_BYTES or more) that may go to more of
# the host's workers in the same call (broadcast_here) goes through the relay, so that
# the same value crosses to the host once (as relay_send), and the lane says so
# (LANE_BULK), which keeps the worker's order. The worker answers on its lane.
BULK_BYTES <- 65536L
LANE_BULK_MESSAGE <- serialize(LANE_BULK, NULL, xdr = FALSE)

lane_send <- function(node, data, caller, m = NULL) {
  S <- state_of(node)
  sent <- S$sent
  id <- .subset2(node, "session")
  bulk <- S$bulk[[id]]
  if (is.null(bulk))  # (a host that could not fork: no relay)
    return(lane_write(node, if (is.null(m)) serialize(data, NULL, xdr = FALSE) else m))
  if (!is.null(S$ended[[id]])) host_lost(node)
  # the relay's connection, under this worker's name (its failures name this host)
  via <- unclass(node)
  via$con <- bulk
  slot <- .subset2(node, "slot")
  if (!is.null(sent) && identical(sent$caller, caller) &&
      identical(sent$data, data, num.eq = FALSE, single.NA = FALSE,
                attrib.as.set = FALSE) && in_parallel_call()) {
    if (id %in% sent$at) return(bulk_to(S, via, node, relay_head(-slot, 0)))
    bulk_to(S, via, node, relay_head(slot, length(sent$message)), sent$message)
    S$sent$at <- c(sent$at, id)
    return(invisible())
  }
  # (a message on the lane leaves the relays' record as it is: they hold what it says)
  if (is.null(m)) m <- serialize(data, NULL, xdr = FALSE)
  if (length(m) < BULK_BYTES || !broadcast_here(node, caller)) return(lane_write(node, m))
  S$sent <- NULL
  bulk_to(S, via, node, relay_head(slot, length(m)), m)
  S$sent <- list(data = data, message = m, at = id, caller = caller)
}

# A frame through the relay, then the lane's word for it. An interrupt (Ctrl-C) after
# the one and before the other would leave the frame unread in the worker's pair, to be
# taken for the next big message's: the host is then given up (its session ended), as
# for a frame cut off part-way (relay_cut), and the next call to it names it.
bulk_to <- function(S, via, node, head, m = raw(0)) {
  marked <- FALSE
  on.exit(if (!marked) relay_cut(via, "a message to it was cut off part-way"))
  relay_write(S, via, head, m)
  withCallingHandlers(writeBin(LANE_BULK_MESSAGE, .subset2(node, "con")), error = function(e) {
    marked <<- TRUE  # (the worker is gone: named as such, its host kept)
    worker_lost(node, e)
  })
  marked <- TRUE
  invisible()
}

# Whether a big message may go to more than one worker of node's host in one call: a
# clusterCall() (and so clusterExport(), clusterEvalQ()) or clusterApply() (whose
# arguments may repeat) over a cluster with more of that host's workers. Any other big
# message (to one worker, a load-balanced task, a future's) goes on the lane: through
# the relay it would only make one more hop.
broadcast_here <- function(node, caller) {
  heads <- call_heads()
  if (!any(heads %in% c("clusterCall", "staticClusterApply"))) return(FALSE)
  cl <- get0("cl", envir = caller, inherits = FALSE)
  if (!is.list(cl)) return(FALSE)
  id <- .subset2(node, "session")
  mine <- which(vapply(cl, function(n) identical(.subset2(n, "session"), id), NA))
  argfun <- get0("argfun", envir = caller, inherits = FALSE)
  if (!is.function(argfun)) return(length(mine) >= 2L)  # (clusterCall: one value to all)
  # staticClusterApply (clusterApply, parLapply): each worker of this round gets its
  # own argument, argfun(start + i - 1); through the relay only if a later worker of
  # this host gets the same one in this round (parLapply's chunks never do).
  start <- get0("start", envir = caller, inherits = FALSE)
  jobs <- get0("jobs", envir = caller, inherits = FALSE)
  i <- get0("i", envir = caller, inherits = FALSE)
  if (!is.numeric(start) || !is.numeric(jobs) || !is.numeric(i)) return(FALSE)
  later <- mine[mine > i & mine <= jobs]
  if (!length(later)) return(FALSE)
  arg <- argfun(start + i - 1L)
  any(vapply(later, function(j) identical(argfun(start + j - 1L), arg, num.eq = FALSE,
    single.NA = FALSE, attrib.as.set = FALSE), NA))  # (as the record is matched)
}

lane_write <- function(node, m) withCallingHandlers(writeBin(m, .subset2(node, "con")),
                                                    error = function(e) worker_lost(node, e))

# parallel::stopCluster() closes each node's connection after its DONE: a host's
# relay connection is closed with the last of its nodes.
closeNode.sshcluster_node <- function(node) {
  S <- registry[[.subset2(node, "launch")]]
  # (by session and rank: a repair's new session reuses the ranks; a repair tells by
  # them a cluster that parallel::stopCluster() stopped)
  if (!is.null(S)) S$closing <- c(S$closing, paste(node$session, node$rank))
  if (!is.null(S) && (!is.null(.subset2(node, "relay")) || !is.null(.subset2(node, "lane")))) {
    same <- Filter(function(n) !is.null(n) && identical(n$session, node$session),
                   unclass(S$cluster))
    last <- all(vapply(same, function(n) paste(n$session, n$rank), "") %in% S$closing)
    if (!is.null(.subset2(node, "lane"))) {  # its lane now, its relay's with the last
      if (con_ok(node$con)) close(node$con)
      if (last) close_bulk(S, node$session)
      return(invisible())
    }
    if (!last) return(invisible())
  }
  if (con_ok(node$con)) close(node$con)
  invisible()
}

for (method in c("recvData.sshcluster_node", "recvOneData.sshcluster",
                 "sendData.sshcluster_node", "closeNode.sshcluster_node"))
  registerS3method(sub("[.].*", "", method), sub("^[^.]*[.]", "", method), get(method),
                   envir = parallel_ns)

# ---------------------------------------------------------------------------
# A host's relay: one connection carries all of that host's workers' messages
# (worker.R's relay has the frames). A message that arrives for another worker
# than the one waited for is held until that worker's answer is asked for.

# The head of a frame: a worker's slot and the length of the message after it.
relay_head <- function(slot, len)
  c(writeBin(as.integer(slot), raw(), size = 4L, endian = "big"),
    writeBin(as.double(len), raw(), size = 8L, endian = "big"))

# One frame from a relay's connection: list(slot, message); slot 0 is an echo. A
# frame that is not one (a slot that is not the session's, a length that is no
# length) or a connection that fails loses the host (relay_broken).
relay_read <- function(node) {
  con <- .subset2(node, "con")
  whole <- FALSE
  on.exit(if (!whole) relay_cut(node, "a message from it was cut off part-way"))
  h <- relay_io(node, readBin(con, "raw", 12L))
  if (length(h) < 12L) relay_broken(node, "its relay closed the connection")
  slot <- readBin(h[1:4], "integer", size = 4L, endian = "big")
  len <- readBin(h[5:12], "double", size = 8L, endian = "big")
  S <- state_of(node)
  if (is.na(slot) || is.na(len) || len < 0 || len > 2^52 || len != round(len) ||
      (slot != 0L && !(slot %in% S$sessions[[.subset2(node, "session")]]$slots)))
    relay_broken(node, "its relay sent what is not a message of its workers")
  m <- if (len > 0) relay_io(node, read_raw(con, len)) else raw(0)
  if (length(m) < len) relay_broken(node, "its relay's connection ended mid-message")
  whole <- TRUE
  list(slot = slot, message = m)
}

# A frame cut off part-way (by an interrupt, Ctrl-C, in the middle of a big message's
# read or write) leaves the host's connection out of step: what follows would be read
# as the rest of it, and a call could wait for good. The host is given up (its
# session ended) without a word here, where an interrupt is on its way: the next call
# to one of its workers names it, and sshcluster_repair() starts them again.
relay_cut <- function(node, why) {
  S <- registry[[.subset2(node, "launch")]]
  id <- .subset2(node, "session")
  if (is.null(S) || !is.null(S$ended[[id]])) return(invisible())
  S$ended[[id]] <- TRUE
  S$broken[[id]] <- if (!is.null(S$failing[[id]])) S$failing[[id]] else
    paste0(why, " (an interrupt?), which left its connection out of step")
  try(supervise(S, paste("kill", id)), silent = TRUE)
  invisible()
}

# Reading or writing a relay's connection: R only warns when a write makes no
# progress for its timeout, and leaves part of a frame behind; any failure ends the
# host's session (what follows on that connection could no longer be told apart).
relay_io <- function(node, expr) withCallingHandlers(expr,
  warning = function(w) relay_broken(node, conditionMessage(w)),
  error = function(e) relay_broken(node, conditionMessage(e)))

relay_broken <- function(node, why) {
  S <- state_of(node)
  id <- .subset2(node, "session")
  # (an interrupt while this waits below gives the host up for this reason: relay_cut)
  if (is.null(S$failing[[id]])) S$failing[[id]] <- why
  # The end of the ssh session (a cut-off host, behind a tunnel) breaks the relay's
  # connection too: ssh's own words say more, given time to come (its keepalive gives
  # up on a cut-off host about when a write to it stalls out).
  if (is.null(S$broken[[id]]))
    for (i in 1:100) {
      if (session_ended(S, id)) host_lost(node)
      Sys.sleep(0.1)
    }
  if (is.null(S$ended[[id]])) {
    S$ended[[id]] <- TRUE  # (remembered: a later send fails at once)
    S$broken[[id]] <- why
    try(supervise(S, paste("kill", id)), silent = TRUE)
  }
  if (!is.null(S$broken[[id]])) why <- S$broken[[id]]
  same <- Filter(function(n) !is.null(n) && identical(n$session, id), unclass(S$cluster))
  fail_node(node, sprintf(
    "sshcluster: lost %s: %s. Its %d worker%s stopped; parallelCluster <- sshcluster_repair() goes on without %s.",
    node$host, sub("[.]+$", "", why), length(same),
    if (length(same) == 1L) " is" else "s are", if (length(same) == 1L) "it" else "them"))
}

# A frame for another worker than the one waited for is kept for it. future's
# resolved() looks at a node's connection itself, and would never see an answer
# held here: while any answer is held, each relay that has one is asked for an echo
# (relay_echo, before a wait returns), so that its connection has something to read.
relay_hold <- function(S, node, f) {
  if (f$slot == 0L && length(f$message)) return(relay_pids(S, node, f$message))
  if (f$slot == 0L) {
    id <- .subset2(node, "session")
    S$echoes[[id]] <- max(0L, S$echoes[[id]] - 1L)
  }
  if (f$slot <= 0L) return(invisible())
  r <- S$first[.subset2(node, "h")] + f$slot
  S$inbox[[r]] <- c(S$inbox[[r]], list(f$message))
  S$held <- S$held + 1L
  invisible()
}

# The relay's word on its workers' pids (slot and pid for each): for the messages
# that name a worker.
relay_pids <- function(S, node, m) {
  ints <- readBin(m, "integer", n = length(m) %/% 4L, size = 4L, endian = "big")
  slots <- S$sessions[[.subset2(node, "session")]]$slots
  if (length(ints) != 2L * length(slots) || !all(ints[c(TRUE, FALSE)] %in% slots))
    relay_broken(node, "its relay did not say which pid each of its workers has")
  S$pids[S$first[.subset2(node, "h")] + ints[c(TRUE, FALSE)]] <- ints[c(FALSE, TRUE)]
  invisible()
}

relay_echo <- function(S) {
  if (S$held == 0L) return(invisible())
  for (r in which(lengths(S$inbox) > 0L)) {
    node <- node_of(S, r)
    # (never to a connection closed since: its number may be a file of the user's now)
    if (is.null(node) || isTRUE(S$echoes[[node$session]] > 0L) || !con_ok(node$con)) next
    S$echoes[[node$session]] <- 1L
    try(writeBin(relay_head(0L, 0), node$con), silent = TRUE)
  }
  invisible()
}

# The cluster's node of rank r, or NULL. (A rank is no position in S$cluster: a repair
# that goes on without a host keeps only the other hosts' nodes.)
node_of <- function(S, r) {
  for (node in unclass(S$cluster)) if (!is.null(node) && node$rank == r) return(node)
  NULL
}

relay_held <- function(S, node) {
  r <- .subset2(node, "rank")
  q <- S$inbox[[r]]
  S$inbox[r] <- list(q[-1L])
  S$held <- S$held - 1L
  value <- received(node, unserialize(q[[1L]]))
  relay_echo(S)
  value
}

relay_recv <- function(node) {
  S <- state_of(node)
  if (length(S$inbox[[.subset2(node, "rank")]])) return(relay_held(S, node))
  S$sent <- NULL
  cons <- list(.subset2(node, "con"))
  slot <- .subset2(node, "slot")
  repeat {
    k <- 0L
    while (k < SPIN && !socketSelect(cons, timeout = 0)) k <- k + 1L
    if (k == SPIN) wait_readable(list(node), cons)
    f <- relay_read(node)
    if (f$slot == slot) {
      value <- received(node, unserialize(f$message))
      relay_echo(S)
      return(value)
    }
    relay_hold(S, node, f)
  }
}

# A message to a worker behind a relay. The same value sent to several workers in
# one of parallel's calls (clusterCall, clusterExport, clusterEvalQ, a clusterApply
# whose arguments repeat) is serialized once, and crosses to each host once: to a
# host that has it already, only its head goes, with the slot negated. (What a relay
# holds is recorded once the write is done; the record serves only the same call of
# parallel's own (its frame, 'caller'), which sends to all its workers before it
# reads: a later call may send the same environment with other contents.)
relay_send <- function(node, data, caller) {
  S <- state_of(node)
  slot <- .subset2(node, "slot")
  id <- .subset2(node, "session")
  if (!is.null(S$broken[[id]])) relay_broken(node, S$broken[[id]])
  if (!is.null(S$ended[[id]])) host_lost(node)
  sent <- S$sent
  if (!is.null(sent) && identical(sent$caller, caller) &&
      identical(sent$data, data, num.eq = FALSE, single.NA = FALSE,
                attrib.as.set = FALSE) && in_parallel_call()) {
    if (id %in% sent$at) return(relay_write(S, node, relay_head(-slot, 0)))
    relay_write(S, node, relay_head(slot, length(sent$message)), sent$message)
    S$sent$at <- c(sent$at, id)
    return(invisible())
  }
  S$sent <- NULL
  m <- serialize(data, NULL, xdr = FALSE)
  relay_write(S, node, relay_head(slot, length(m)), m)
  S$sent <- list(data = data, message = m, at = id, caller = caller)
}

# Writes a head and a message. What has arrived is read first and held: a host's
# workers write their answers on this connection themselves, and one that waits for
# this primary to read never holds up the relay, which reads what is written to it
# and hands it on (it never waits for a worker's lock; worker.R).
relay_write <- function(S, node, head, m = raw(0)) {
  con <- .subset2(node, "con")
  whole <- FALSE
  on.exit(if (!whole) relay_cut(node, "a message to it was cut off part-way"))
  if (length(m) < 1048576L) {
    relay_io(node, writeBin(c(head, m), con))
    whole <- TRUE
    return(invisible())
  }
  while (socketSelect(list(con), timeout = 0)) relay_hold(S, node, relay_read(node))
  relay_io(node, writeBin(head, con))
  relay_io(node, writeBin(m, con))
  whole <- TRUE
  relay_echo(S)  # (the reads may have taken an echo, or held answers)
  invisible()
}
