# ---------------------------------------------------------------------------
# Repairing: going on without lost hosts, and in step after an interrupted call

DRAIN_SECONDS <- 5  # how long a worker may take to answer the repair's no-op call

# Looks at every worker: drops the dead ones, discards results an interrupted
# call left behind, restarts workers still busy with such a call, relaunches
# workers on hosts that answer ssh again; reports what it did per host and
# returns the cluster (also as parallelCluster). A healthy cluster is left as
# it is. It never runs a task of yours again: that is for you to decide.
repair <- function(S) {
  if (is.null(S$cluster))
    stop("sshcluster: this cluster was stopped; source() the file again", call. = FALSE)
  if (!supervisor_ok(S)) stop(SUPERVISOR_CLOSED, call. = FALSE)
  follow <- registered(S)  # registrations of the cluster object as it was before
  nodes <- Filter(Negate(is.null), unclass(S$cluster))
  # (a worker whose connection something else closed is started again below)
  if (length(nodes) && all(vapply(nodes, function(n) !con_ok(n$con) &&
                                    paste(n$session, n$rank) %in% S$closing, NA)))
    stop("sshcluster: this cluster was stopped (parallel::stopCluster()); source() the ",
         "file again", call. = FALSE)
  ranks <- vapply(nodes, `[[`, 1L, "rank")
  names(nodes) <- ranks
  state <- setNames(rep("ok", length(nodes)), ranks)
  why <- setNames(rep("", length(nodes)), ranks)
  discarded <- setNames(integer(length(nodes)), ranks)
  drop <- function(r, reason) {
    state[[r]] <<- "dead"
    why[[r]] <<- reason
  }
  # One message from node's connection: the rank (as a name) it is from and the
  # value, or an error. Behind a relay, the message may be another worker's: every
  # worker on that connection is dropped on an error, and an echo is nobody's.
  read_one <- function(node) {
    r <- as.character(node$rank)
    if (is.null(node$relay)) return(list(r = r, v = tryCatch(unserialize(node$con),
                                                              error = identity)))
    f <- tryCatch(relay_read(node), error = identity)
    if (inherits(f, "error")) return(list(r = r, v = f, all = TRUE))
    if (f$slot <= 0L) {  # (an echo, or the relay's pids)
      relay_hold(S, node, f)
      return(list(r = NA, v = NULL))
    }
    list(r = as.character(S$first[node$h] + f$slot),
         v = tryCatch(unserialize(f$message), error = identity))
  }
  lost_link <- function(node, v) for (n in nodes) if (identical(n$con, node$con))
    drop(as.character(n$rank), conditionMessage(v))
  # 1. dead sessions, dead connections, results nobody read (also those a relay's
  # connection brought for other workers)
  for (r in names(nodes)) discarded[[r]] <- length(S$inbox[[as.integer(r)]])
  S$inbox[] <- list(NULL)
  S$held <- 0L
  S$echoes <- list()
  for (r in names(nodes)) {
    node <- nodes[[r]]
    # (or given up by this primary: a relay's connection out of step, not to be read)
    if (!is.null(S$ended[[node$session]]) || session_ended(S, node$session)) {
      drop(r, if (!is.null(S$broken[[node$session]])) S$broken[[node$session]]
              else session_reason(S, node$session))
      next
    }
    # (not read, nor written to below: its number may be a file of the user's now)
    if (!con_ok(node$con)) {
      drop(r, "its connection was closed")
      next
    }
    status <- gone(S, node)
    if (!is.na(status)) drop(r, sprintf("its host says the process ended (status %s)", status))
    while (state[[r]] == "ok" && socketSelect(list(node$con), timeout = 0)) {
      got <- read_one(node)
      if (isTRUE(got$all)) lost_link(node, got$v)
      else if (is.na(got$r) || !(got$r %in% names(nodes))) next
      else if (inherits(got$v, "error")) drop(got$r, conditionMessage(got$v))
      else discarded[[got$r]] <- discarded[[got$r]] + 1L
    }
  }
  # 2. a no-op call to every live worker: it answers at once unless it is still
  # busy with a call that was interrupted
  marker <- random_hex(8L)
  S$calls[] <- 0L  # the marker, not the count, tells who is in step now
  for (r in names(nodes)[state == "ok"]) {
    sent <- tryCatch({
      internals$sendCall(nodes[[r]], identity, list(marker))
      TRUE
    }, error = function(e) conditionMessage(e))
    if (!isTRUE(sent)) drop(r, sent)
  }
  waiting <- names(nodes)[state == "ok"]
  deadline <- Sys.time() + DRAIN_SECONDS
  while (length(waiting) && Sys.time() < deadline) {
    cons <- lapply(nodes[waiting], `[[`, "con")
    ready <- socketSelect(cons, timeout = 0.2)
    # (one read per connection and round: a relay's is several workers')
    for (r in waiting[ready & !duplicated(cons)]) {
      if (state[[r]] != "ok") next
      got <- read_one(nodes[[r]])
      if (isTRUE(got$all)) {
        lost_link(nodes[[r]], got$v)
      } else if (is.na(got$r) || !(got$r %in% names(nodes))) {
        next
      } else if (inherits(got$v, "error")) {
        drop(got$r, conditionMessage(got$v))
      } else if (identical(got$v$value, marker) && state[[got$r]] == "ok") {
        state[[got$r]] <- "synced"
      } else {
        discarded[[got$r]] <- discarded[[got$r]] + 1L
      }
    }
    waiting <- names(nodes)[state == "ok"]
  }
  state[waiting] <- "busy"
  # (a worker that answered the marker has no call left to answer, also if what follows
  # is interrupted)
  S$calls[as.integer(names(state)[state == "synced"])] <- 0L
  if (all(state == "synced") && length(nodes) == sum(vapply(S$config$machines,
                                                            function(m) m$ncore, 1L))) {
    S$calls[] <- 0L
    message(sprintf("sshcluster_repair: all %d workers are healthy%s; nothing else to do",
                    length(nodes), if (sum(discarded)) sprintf(" (%d results of an unfinished call discarded)", sum(discarded)) else ""))
    return(invisible(S$cluster))
  }
  # 3. sessions with a busy worker end whole (their workers cannot be stopped
  # one by one); their workers start again with the dead ones
  # (a relay's session too when any of its workers is lost: its workers share one
  # connection, which is closed with them)
  restart_sessions <- unique(c(vapply(nodes[state == "busy"], `[[`, "", "session"),
    vapply(Filter(function(n) !is.null(n$relay), nodes[state == "dead"]), `[[`, "",
           "session")))
  for (id in restart_sessions) supervise(S, paste("kill", id))
  again <- names(nodes)[state == "dead" | vapply(nodes, function(n) n$session %in%
                                                    restart_sessions, NA)]
  kept <- nodes[setdiff(names(nodes), again)]
  # From here the cluster holds only the workers kept: an interrupt (Ctrl-C) while the
  # others start again leaves a cluster that the next repair completes, and a call to
  # a worker stopped here says so (stale()).
  S$repairing <- TRUE
  suspendInterrupts({
    S$cluster <- structure(unname(kept), class = c("sshcluster", "SOCKcluster", "cluster"))
    for (r in again) if (con_ok(nodes[[r]]$con)) try(close(nodes[[r]]$con), silent = TRUE)
  })
  # 4. relaunch every slot that has no worker, host by host
  machines <- S$config$machines
  missing <- lapply(seq_along(machines), function(h) {
    have <- vapply(Filter(function(n) n$h == h, kept), `[[`, 1L, "slot")
    setdiff(seq_len(machines[[h]]$ncore), have)
  })
  S$lost <- list()
  new <- list()
  joined <- FALSE
  on.exit(if (!joined) end_new(S, new), add = TRUE)  # (an interrupt, before they join)
  new <- launch(S, missing, deadline = Sys.time() + S$config$setup_timeout, fail_fast = FALSE)
  # (the new workers get what the first ones got after the launch; if that fails, they
  # are not kept: a worker without it would not be like the others)
  for (f in S$on_new_workers) if (length(new)) {
    failed <- tryCatch({
      f(structure(new, class = c("sshcluster", "SOCKcluster", "cluster")))
      NULL
    }, error = conditionMessage)
    if (!is.null(failed)) {
      message("sshcluster_repair: the workers started again could not be set up (",
              failed, "); they were stopped")
      end_new(S, new)
      S$calls[vapply(new, `[[`, 1L, "rank")] <- 0L
      new <- list()
    }
  }
  all <- c(unname(kept), new)
  all <- all[order(vapply(all, `[[`, 1L, "rank"))]
  S$cluster <- structure(all, class = c("sshcluster", "SOCKcluster", "cluster"))
  joined <- TRUE
  S$repairing <- FALSE
  # (the relay connections of sessions none of whose workers are left)
  close_bulk(S, setdiff(names(S$bulk), vapply(all, `[[`, "", "session")))
  # 5. what happened, per host
  lines <- character()
  for (h in seq_along(machines)) {
    mine <- function(list) Filter(function(n) n$h == h, list)
    before <- nodes[vapply(nodes, function(n) n$h == h, NA)]
    dead <- sum(state[names(before)] == "dead")
    busy <- sum(state[names(before)] == "busy")
    back <- length(mine(new))
    lines <- c(lines, sprintf("  %s: %s", machines[[h]]$host, paste(c(
      sprintf("%d of %d workers running", length(mine(all)), machines[[h]]$ncore),
      if (dead) sprintf("%d lost (%s)", dead, paste(unique(why[names(before)][state[names(before)] == "dead"]), collapse = "; ")),
      if (busy) sprintf("%d still busy with an interrupted call, so its session was restarted", busy),
      if (sum(discarded[names(before)])) sprintf("%d results of an unfinished call discarded", sum(discarded[names(before)])),
      if (back) sprintf("%d started again", back),
      if (length(missing[[h]]) > back) sprintf("%d could not be started (%s)", length(missing[[h]]) - back,
                                          last_reason(S, h))
    ), collapse = "; ")))
  }
  message(sprintf("sshcluster_repair: %d of %d workers running:\n%s", length(all),
                  sum(vapply(machines, function(m) m$ncore, 1L)), paste(lines, collapse = "\n")))
  S$calls[] <- 0L
  # (the global name only if it held this cluster: it may be another file's now)
  current <- get0("parallelCluster", envir = globalenv(), inherits = FALSE)
  if (is.null(current) || belongs(current, S))
    assign("parallelCluster", S$cluster, envir = globalenv())
  register(follow, S$cluster)
  invisible(S$cluster)
}

# Stops the workers a repair started and does not keep: closes their connections and
# ends their sessions (started for them alone).
end_new <- function(S, new) {
  for (node in new) if (con_ok(node$con)) try(close(node$con), silent = TRUE)
  ids <- unique(vapply(new, `[[`, "", "session"))
  close_bulk(S, ids)
  for (id in ids) try(supervise(S, paste("kill", id)), silent = TRUE)
}

# What every worker a repair starts gets before the cluster is handed back (f(cl) with
# the new workers as a cluster), as the first ones got it after the launch: the
# library of `sshcluster sync` first on its .libPaths(), for one.
on_new_workers <- function(cl, f) {
  S <- state_of(cl[[1L]])
  S$on_new_workers <- c(S$on_new_workers, list(f))
  invisible(cl)
}

# Why machine h's newest session ended.
last_reason <- function(S, h) {
  ids <- names(S$sessions)[vapply(S$sessions, function(s) s$h == h, NA)]
  id <- ids[length(ids)]
  if (session_ended(S, id)) session_reason(S, id) else "its workers did not connect in time"
}
