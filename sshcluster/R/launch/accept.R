# ---------------------------------------------------------------------------
# Accepting workers: the handshake and the accept loop

HANDSHAKE_SECONDS <- 2     # a connection that has not sent its hello by then is closed
PROOF_SECONDS <- 5         # nor one challenged that has not proved itself by then (a
                           # busy host's forked workers all hash at once; the worker
                           # of a proof refused as too late connects again)
MAX_PENDING <- 32L         # connections proving themselves at one time
ACCEPT_BURST <- 256L       # connections taken from the kernel's queue at one go
WAITING_NOTE_SECONDS <- 5  # a launch still waiting after this long says for which hosts,
                           # and again every as many seconds

# Starts sessions for the wanted slots (a list: machine -> slots) and accepts
# their workers until all are there or the deadline passes. With fail_fast, a
# host whose session ends first stops everything with an error naming each
# failed host; without, such hosts are left out. Returns the new nodes.
launch <- function(S, wanted, deadline, fail_fast) {
  # The port listens only while a launch (or a repair's relaunch) accepts workers:
  # between launches nobody can queue connections on it (a queue filled before a
  # repair would meet the relaunch). It listens before any host starts, so a
  # worker's refused connection means a firewall, not "too early".
  listen(S)
  on.exit({
    if (!is.null(S$listener) && con_ok(S$listener)) try(close(S$listener), silent = TRUE)
    S$listener <- NULL
  }, add = TRUE)
  ids <- character()
  for (h in seq_along(wanted)) {
    parts <- relay_parts(S$config, wanted[[h]])
    for (k in seq_along(parts))
      if (length(parts[[k]])) ids <- c(ids, start_host(S, h, parts[[k]], k))
  }
  expected <- list()
  for (id in ids) for (t in S$sessions[[id]]$tokens)
    expected[[sprintf("%d.%d", S$sessions[[id]]$h, t$slot)]] <- c(t, id = id)
  nodes <- list()
  pending <- list()
  done <- FALSE
  on.exit({
    for (p in pending) try(close(p$con), silent = TRUE)
    if (!done) for (node in nodes) try(close(node$con), silent = TRUE)
    if (!done) close_bulk(S, ids)
    # (an interrupt, Ctrl-C: the sessions started for them end too)
    if (!done) for (id in ids) try(supervise(S, paste("kill", id)), silent = TRUE)
  }, add = TRUE)
  lost <- character()
  noted <- Sys.time()
  # One connection's turn: reads what it sent; once its hello is whole, answers
  # the challenge (or refuses a slot not expected); once its proof is whole,
  # admits or refuses it; refuses it after HANDSHAKE_SECONDS without a hello, or
  # PROOF_SECONDS without a proof. NULL: done with it.
  step <- function(p) {
    if (is.null(p$expect)) {
      p$hello <- read_available(p$con, p$hello, HELLO_SIZE)
      magic <- seq_len(min(4L, length(p$hello)))
      if (!identical(p$hello[magic], PROOF_MAGIC[magic])) {  # not a worker: no more time
        refuse(S, p$con)
        return(NULL)
      }
      if (length(p$hello) == HELLO_SIZE) {
        p <- challenge(S, p, expected)
        if (is.null(p)) return(NULL)
      }
      got <- p$hello
    }
    if (!is.null(p$expect)) {
      p$proof <- read_available(p$con, p$proof, MAC_SIZE)
      if (length(p$proof) == MAC_SIZE) {
        # (the slot is looked up again: another connection may have taken it since)
        e <- expected[[p$slot_id]]
        if (!same_bytes(p$proof, p$expect) || is.null(e)) {
          refuse(S, p$con)
        } else if (e$slot <= 0L && isTRUE(S$sessions[[e$id]]$lanes)) {
          # a host's relay, whose workers come with lanes of their own
          writeBin(ADMITTED, p$con)
          flush(p$con)
          S$bulk[[e$id]] <- p$con
          expected[[p$slot_id]] <<- NULL
        } else if (e$slot <= 0L) {
          # a host's relay: its workers' nodes all share its connection
          got <- admit_relay(S, p, e)
          if (length(got)) for (t in S$sessions[[e$id]]$tokens)
            expected[[sprintf("%d.%d", S$sessions[[e$id]]$h, t$slot)]] <<- NULL
          nodes <<- c(nodes, got)
        } else {
          node <- admit(S, p, e)
          expected[[p$slot_id]] <<- NULL
          # (a host that could not fork: its workers came alone, and its relay will not)
          for (t in S$sessions[[e$id]]$tokens) if (t$slot <= 0L)
            expected[[sprintf("%d.%d", node$h, t$slot)]] <<- NULL
          nodes[[length(nodes) + 1L]] <<- node
        }
        return(NULL)
      }
      got <- p$proof
    }
    limit <- if (is.null(p$expect)) HANDSHAKE_SECONDS else PROOF_SECONDS
    if (!is.null(attr(got, "eof")) ||
        difftime(Sys.time(), p$since, units = "secs") > limit) {
      refuse(S, p$con)
      return(NULL)
    }
    p
  }
  repeat {
    open_ids <- setdiff(unique(vapply(expected, `[[`, "", "id")), lost)
    if (!length(open_ids)) break
    ended <- open_ids[vapply(open_ids, function(id) session_ended(S, id), NA)]
    if (length(ended)) {
      if (fail_fast) {
        Sys.sleep(0.5)  # so that one error reports every host that fails at once
        ended <- open_ids[vapply(open_ids, function(id) session_ended(S, id), NA)]
        launch_failed(S, nodes, expected, ended, "could not start the cluster")
      }
      lost <- c(lost, ended)
      next
    }
    if (Sys.time() > deadline) {
      if (fail_fast) launch_failed(S, nodes, expected, character(), sprintf(
        "workers did not connect within %d s (setup_timeout)",
        as.integer(S$config$setup_timeout)))
      lost <- c(lost, open_ids)
      next
    }
    if (difftime(Sys.time(), noted, units = "secs") >= WAITING_NOTE_SECONDS) {
      note_waiting(S, expected, lost, deadline)
      noted <- Sys.time()
    }
    ready <- socketSelect(c(list(S$listener), lapply(pending, `[[`, "con")), timeout = 0.1)
    # Take every connection waiting, so that a flood cannot fill the kernel's queue
    # and keep genuine workers out. A new connection's hello is usually there
    # already and is checked at once; beyond MAX_PENDING (or R's free
    # connections) the oldest connection still proving itself makes room.
    pending <- Filter(Negate(is.null), lapply(pending, step))
    taken <- 0L
    while (ready[1] && taken < ACCEPT_BURST) {
      if (length(pending) >= MAX_PENDING || S$limit - length(getAllConnections()) < 1L) {
        # The oldest that has not sent a whole hello makes room, after a last look at
        # what it sent. One that was challenged is not closed to make room (its worker
        # would have to start again). With only challenged ones waiting, the rest waits
        # in the kernel's queue.
        unproven <- which(vapply(pending, function(p) is.null(p$expect), NA))
        if (!length(unproven)) break
        victim <- unproven[1]
        last <- step(pending[[victim]])
        if (!is.null(last) && !is.null(last$expect)) {
          # its hello came whole at this last look, and it was challenged: it stays
          pending[[victim]] <- last
          break
        }
        if (!is.null(last)) refuse(S, last$con)
        pending <- pending[-victim]
      }
      con <- socketAccept(S$listener, blocking = TRUE, open = "a+b",
                          timeout = STALL_SECONDS, options = "no-delay")
      p <- step(list(con = con, hello = raw(0), proof = raw(0), since = Sys.time()))
      if (!is.null(p)) pending[[length(pending) + 1L]] <- p
      taken <- taken + 1L
      ready[1] <- socketSelect(list(S$listener), timeout = 0)
    }
    # slots of lost sessions are no longer expected
    expected <- expected[!vapply(expected, function(e) e$id %in% lost, NA)]
    if (!length(expected)) break
  }
  # A session given up on (too slow) ends now, and so do the workers it did admit.
  for (id in lost) if (!session_ended(S, id)) supervise(S, paste("kill", id))
  nodes <- Filter(function(node) !(node$session %in% lost), nodes)
  close_bulk(S, lost)
  done <- TRUE
  nodes
}

# Says which hosts the launch still waits for, and how many of their workers.
note_waiting <- function(S, expected, lost, deadline) {
  open <- Filter(function(e) !(e$id %in% lost) && e$slot > 0L, expected)
  if (!length(open)) return(invisible())
  h <- vapply(open, function(e) S$sessions[[e$id]]$h, 1L)
  missing <- table(h)
  hosts <- vapply(as.integer(names(missing)), function(i) sprintf("%s (%d of %d)",
    S$config$machines[[i]]$host, missing[[as.character(i)]],
    as.integer(S$config$machines[[i]]$ncore)), "")
  shown <- if (length(hosts) > 5L) c(hosts[1:5], sprintf("and %d more", length(hosts) - 5L))
           else hosts
  message(sprintf("sshcluster: still waiting for workers from %s; setup_timeout in %d s",
                  paste(shown, collapse = ", "),
                  max(0L, as.integer(difftime(deadline, Sys.time(), units = "secs")))))
}

# Reads what has arrived of a message of 'size' bytes, without ever waiting for
# more: one byte at a time while socketSelect() says there is one (a whole
# message usually arrives at once and is then in R's buffer).
read_available <- function(con, have, size) {
  while (length(have) < size && socketSelect(list(con), timeout = 0)) {
    b <- readBin(con, "raw", 1L)
    if (!length(b)) return(structure(have, eof = TRUE))
    have <- c(have, b)
  }
  have
}

refuse <- function(S, con) {
  S$refused <- S$refused + 1L
  close(con)
}

hello_int <- function(hello, at) readBin(hello[at:(at + 3L)], "integer", size = 4L,
                                         endian = "big")

# A whole hello for an expected slot: answers with a fresh nonce and the primary's
# MAC, and returns the connection's state, now waiting for the worker's MAC; else
# refuses it and returns NULL.
challenge <- function(S, p, expected) {
  p$slot_id <- sprintf("%d.%d", hello_int(p$hello, 5L), hello_int(p$hello, 9L))
  e <- expected[[p$slot_id]]
  if (is.null(e)) {
    refuse(S, p$con)
    return(NULL)
  }
  key <- c(hex_bytes(e$worker), hex_bytes(e$primary))
  # A hello without the slot's MAC (a stranger's), or one seen before (its nonce: a
  # replay), is refused at once: only a peer with the key is challenged and waited for.
  head <- p$hello[seq_len(HELLO_SIZE - MAC_SIZE)]
  seen <- paste(p$slot_id, paste(head[17:32], collapse = ""))
  if (!same_bytes(p$hello, hello_of(key, head)) || !is.null(S$hellos[[seen]])) {
    refuse(S, p$con)
    return(NULL)
  }
  S$hellos[[seen]] <- TRUE
  nonce <- random_bytes(NONCE_SIZE)
  writeBin(c(nonce, proof_mac(key, "primary", p$hello, nonce)), p$con)
  flush(p$con)
  p$expect <- proof_mac(key, "worker", p$hello, nonce)
  p
}

# A connection that proved it holds the key of slot e: a node of the cluster. Its
# worker is told so (till then it takes nothing for granted).
admit <- function(S, p, e) {
  writeBin(ADMITTED, p$con)
  flush(p$con)
  h <- hello_int(p$hello, 5L)
  slot <- hello_int(p$hello, 9L)
  structure(list(con = p$con, host = S$config$machines[[h]]$host, rank = S$first[h] + slot,
                 h = h, slot = slot, pid = hello_int(p$hello, 13L), session = e$id,
                 launch = S$id, lane = if (isTRUE(S$sessions[[e$id]]$lanes)) TRUE),
            class = c("sshcluster_node", "SOCKnode"))
}

# Closes the relays' connections of sessions ids whose workers have lanes (the
# connections a lane's big messages go through; node.R).
close_bulk <- function(S, ids) {
  for (id in intersect(ids, names(S$bulk))) {
    if (con_ok(S$bulk[[id]])) try(close(S$bulk[[id]]), silent = TRUE)
    S$bulk[[id]] <- NULL
  }
  invisible()
}

# A host's relay that proved itself: each of its session's workers becomes a node
# on its connection. (Which pid each worker has comes later, in the relay's first
# frame, once it has forked them: relay_hold().)
admit_relay <- function(S, p, e) {
  writeBin(ADMITTED, p$con)
  flush(p$con)
  slots <- vapply(Filter(function(t) t$slot > 0L, S$sessions[[e$id]]$tokens), `[[`, 1L,
                  "slot")
  h <- hello_int(p$hello, 5L)
  lapply(slots, function(slot) structure(list(
    con = p$con, host = S$config$machines[[h]]$host, rank = S$first[h] + slot, h = h,
    slot = slot, pid = NA_integer_, session = e$id, launch = S$id, relay = TRUE),
    class = c("sshcluster_node", "SOCKnode")))
}

# Stops everything started and signals an error naming each failed machine
# with ssh's own message (or, on a timeout, each machine still missing
# workers). The condition's 'hosts' lists those machines.
launch_failed <- function(S, nodes, expected, ended, what) {
  expected <- Filter(function(e) e$slot > 0L, expected)  # (not the relays)
  missing <- table(factor(vapply(expected, function(e) S$sessions[[e$id]]$h, 1L),
                          levels = seq_along(S$config$machines)))
  n <- vapply(S$config$machines, function(m) as.integer(m$ncore), 1L)
  failed_h <- vapply(ended, function(id) S$sessions[[id]]$h, 1L)
  lines <- character()
  for (h in seq_along(n)) {
    if (missing[h] == 0L) next
    host <- S$config$machines[[h]]$host
    id <- names(S$sessions)[vapply(S$sessions, function(s) s$h == h, NA)][1]
    if (h %in% failed_h) {
      lines <- c(lines, sprintf("  %s: %s", host, session_reason(S, id)))
    } else {
      err <- read_text(paste0(S$sessions[[id]]$file, ".err"))
      lines <- c(lines, sprintf("  %s: %d of %d workers connected when the launch stopped%s",
                                host, n[h] - missing[h], n[h],
                                if (nzchar(err)) paste0("; ssh says: ", err) else ""))
    }
  }
  hosts <- vapply(if (length(failed_h)) failed_h else which(missing > 0L),
                  function(h) S$config$machines[[h]]$host, "")
  for (node in nodes) try(close(node$con), silent = TRUE)
  shutdown(S, grace = 0)
  msg <- sprintf("sshcluster: %s (%d of %d workers connected, all stopped):\n%s",
                 what, length(nodes), sum(n), paste(lines, collapse = "\n"))
  stop(structure(class = c("sshcluster_error", "error", "condition"),
                 list(message = msg, call = NULL, hosts = unname(hosts))))
}
