# sshcluster's R worker, run on each host by remote.sh:
#   Rscript -e CODE MASTER PORT MACHINE TIMEOUT fork|fresh
# Its stdin holds one line: the worker tokens, "slot:worker-token:primary-token"
# separated by ",". A fresh worker gets one; the one R of a forking host gets all
# of its host's and forks one worker per token. A forking host's line may start with
# a token for a slot below 1: that host's R is then the relay of its workers (see
# relay below).
# Each worker connects to the primary, and the two prove to each other that they
# hold the slot's key (challenge and response, proof.R, pasted before this file),
# and only then runs parallel's own worker loop. Nothing is unserialized from a
# peer that has not proved itself, and the key itself is never sent.
#
# The code runs in a function, not in local() (nor does the code around it): local()
# evaluates in a frame that is the global environment, and code that looks for
# parallel's 'master' node by walking sys.frames() up to the global environment
# (future's relay of immediate conditions, which progressr's updates are) would stop
# there, below workLoop().
(function() {
  # (r_version.R, pasted before this file, as it is into the check's R)
  old_r <- r_too_old()
  if (!is.null(old_r)) {
    cat("sshcluster: ", old_r, "\n", sep = "", file = stderr())
    quit(save = "no", status = 3L)
  }
  args <- commandArgs(TRUE)
  master <- args[1]
  port <- as.integer(args[2])
  machine <- as.integer(args[3])
  timeout <- as.numeric(args[4])
  fork <- identical(args[5], "fork")
  Sys.unsetenv("SSHCLUSTER_CODE")  # (read: this R's programs need not carry it)
  # On USR2 (sent by someone's own tooling, say) R quits and saves the workspace, if it
  # changed (clusterExport() changes it), to .RData in the working directory: the
  # workdir, or the login directory, where the user's own .RData would be overwritten,
  # by every worker at once. A worker saves none, as Rscript saves none.
  base <- baseenv()
  unlockBinding("sys.save.image", base)
  assign("sys.save.image", function(name) invisible(NULL), envir = base)
  lockBinding("sys.save.image", base)
  input <- file("stdin")
  items <- strsplit(readLines(input, n = 1L, warn = FALSE), ",", fixed = TRUE)[[1]]
  close(input)
  relay_item <- if (fork && startsWith(items[1], "-")) items[1]
  if (!is.null(relay_item)) items <- items[-1]
  # (a relay's token ending in ":lanes": each worker also has a connection of its own,
  # its lane, for everything but big messages, which come through the relay)
  lanes <- !is.null(relay_item) &&
    identical(strsplit(relay_item, ":", fixed = TRUE)[[1]][4], "lanes")
  # With lanes, the relay for big messages is perl's (relay.pl, RELAY_PL) on Linux: each
  # message is kept once in a file, which the host's workers read where it is. Without
  # a perl that runs it, or where its descriptors cannot be told it, or told so
  # ("stream" after "lanes"), it is this R, which hands each message on through each
  # worker's socket. Which one is decided once the workers are forked, and each worker
  # learns it from the first byte on its socket from the relay (bulk_mode).
  stored <- lanes && !identical(strsplit(relay_item, ":", fixed = TRUE)[[1]][5], "stream") &&
    identical(Sys.info()[["sysname"]], "Linux") && R.version$arch %in% c("x86_64", "aarch64") &&
    nzchar(Sys.which("perl")) && dir.exists("/proc/self/fd")
  bulk_mode <- NULL

  # parallel internals, named in one place: its worker loop and output sink, and
  # closing a file descriptor in a forked child.
  workLoop <- get("workLoop", envir = asNamespace("parallel"))
  sinkWorkerOutput <- get("sinkWorkerOutput", envir = asNamespace("parallel"))
  closeFD <- get("closeFD", envir = asNamespace("parallel"))

  # (one string, so one write: the forks of a host may fail at the same moment, and
  # their lines must not interleave)
  say <- function(...) cat(paste0("sshcluster: ", ..., "\n"), file = stderr())
  fail <- function(...) {
    say(...)
    quit(save = "no", status = 3L)
  }
  bytes <- function(hex) {
    at <- seq(1L, nchar(hex), by = 2L)
    as.raw(strtoi(substring(hex, at, at + 1L), 16L))
  }
  int4 <- function(i) writeBin(as.integer(i), raw(), size = 4L, endian = "big")
  # Where the workers' output goes (worker_output): nowhere, to this R's stdout,
  # which the primary prints after the host's name (messages and warnings too), or
  # to a file per host in a directory (worker_output.R, pasted before this file, as it
  # is into the check's R): one it refuses fails the host now.
  output <- Sys.getenv("SSHCLUSTER_OUTPUT", "none")
  if (!output %in% c("none", "console")) {
    out_to <- output_log(output)
    if (!is.null(out_to$why)) fail(out_to$why)
    output <- out_to$log
  }
  where <- sprintf("R on %s cannot connect to the primary at %s port %d",
                   Sys.info()[["nodename"]], master, port)

  # The primary listens before any host is started, so a refusal is final at
  # once (a firewall, a wrong address); quick retries cover a passing hiccup.
  # Unanswered attempts are tried three times (a flood of strangers can fill
  # the primary's queue for a moment) before they count as a firewall.
  connect <- function() {
    t0 <- Sys.time()
    silent <- 0L
    repeat {
      t1 <- Sys.time()
      con <- tryCatch(suppressWarnings(socketConnection(
        master, port, blocking = TRUE, open = "a+b", timeout = 5,
        options = "no-delay")), error = identity)
      if (inherits(con, "connection")) return(con)
      if (as.numeric(Sys.time() - t1, units = "secs") >= 4.5) silent <- silent + 1L
      if (silent >= 3L)
        fail(where, ": the connection timed out after 5 s, three times (packets dropped by a",
             " firewall? try tunnel: reverse)")
      if (!silent && as.numeric(Sys.time() - t0, units = "secs") > 2)
        fail(where, ": the connection was refused (firewall or NAT? try tunnel: reverse)")
      Sys.sleep(0.2)
    }
  }

  # Connects and proves it holds the slot's key (its two tokens) by challenge and
  # response (proof.R): the primary proves it first, so a peer without the key
  # learns nothing it could replay. A primary that closed the connection before
  # answering (a flood of strangers made it drop the oldest waiting ones), or before
  # it said ADMITTED (the proof came too late), is tried again until the setup
  # deadline.
  handshake <- function(token) {
    deadline <- Sys.time() + timeout
    key <- c(bytes(token[2]), bytes(token[3]))
    repeat {
      con <- connect()
      hello <- hello_of(key, c(PROOF_MAGIC, int4(machine), int4(as.integer(token[1])),
                               int4(Sys.getpid()), random_bytes(NONCE_SIZE)))
      writeBin(hello, con)
      flush(con)
      socketTimeout(con, min(timeout, 60))
      answer <- tryCatch(readBin(con, "raw", NONCE_SIZE + MAC_SIZE), error = function(e) raw(0))
      nonce <- answer[seq_len(NONCE_SIZE)]
      genuine <- length(answer) == NONCE_SIZE + MAC_SIZE &&
        same_bytes(answer[-seq_len(NONCE_SIZE)], proof_mac(key, "primary", hello, nonce))
      if (genuine) {
        writeBin(proof_mac(key, "worker", hello, nonce), con)
        flush(con)
        ok <- tryCatch(readBin(con, "raw", 1L), error = function(e) raw(0))
        if (identical(ok, ADMITTED)) return(con)
        # (else our primary gave up on a proof that came too late: again)
      }
      close(con)
      if ((length(answer) && !genuine) || Sys.time() > deadline)
        fail("the primary at ", master, " port ", port, " did not accept this worker ",
             "(a launch that has already ended?)")
      Sys.sleep(0.2)
    }
  }

  # parallel's worker loop, on its connection to the primary (native serialization,
  # as parallelly's workers use by default: R's XDR costs every message a byte swap),
  # or, behind this host's relay, on its connection to the relay.
  work <- function(item, con = NULL, relayed = NULL) {
    if (is.null(con)) con <- handshake(strsplit(item, ":", fixed = TRUE)[[1]])
    socketTimeout(con, 2592000)  # parallel's own worker timeout
    # (and on the relay's socket of a worker with a lane: its marker may come long
    # before the message, which the relay hands to the host's workers one by one)
    if (!is.null(relayed$bulk)) socketTimeout(relayed$bulk, 2592000)
    if (output == "console") sink(stdout(), type = "message")
    else sinkWorkerOutput(if (output == "none") "/dev/null" else output)
    workLoop(structure(c(list(con = con), relayed), class = c(
      if (!is.null(relayed$bulk)) "sshcluster_lane" else c(if (!is.null(relayed))
        "sshcluster_relayed", "SOCK0node"), "SOCKnode")))
    TRUE
  }

  # --- The relay: this host's one connection to the primary carries every worker's
  # messages. Primary to relay: a head (a worker's slot, the length of what follows)
  # and a message for that worker, which the relay hands on; a negative slot: the
  # last message again, for that worker (a broadcast crosses once per host); slot 0:
  # an echo asked for. To the primary: the slot a message is from, its length and the
  # message; each worker writes its answers itself, on the connection it inherited
  # from the relay, holding the host's lock (a byte in a pipe: whoever reads it holds
  # the connection until it writes it back) for the whole frame. Slot 0 from the
  # relay: an echo, or (once, after the forks) each worker's slot and pid.
  head8 <- function(len) writeBin(as.double(len), raw(), size = 8L, endian = "big")
  # A frame to the primary, holding the host's lock, taken and the frame written
  # with interrupts held back (a lost token would silence the host). A write that
  # fails part-way keeps the token: the stream is broken, and the relay, which then
  # cannot take the lock once this worker has ended, gives up the host.
  to_primary <- function(P, lock, slot, m) {
    force(m)  # (serialized before the lock is taken)
    held <- FALSE
    on.exit(if (held) {
      writeBin(as.raw(1L), lock)
      flush(lock)
    })
    suspendInterrupts({
      held <- length(readBin(lock, "raw", 1L)) == 1L
      if (!held) stop("sshcluster: the host's lock is gone", call. = FALSE)
      withCallingHandlers({
        if (length(m) < 65536L) writeBin(c(int4(slot), head8(length(m)), m), P) else {
          writeBin(c(int4(slot), head8(length(m))), P)
          writeBin(m, P)
        }
      }, warning = function(w) held <<- FALSE, error = function(e) held <<- FALSE)
    })
    invisible()
  }
  # A worker with a lane reads its messages there; a big one comes through the relay,
  # announced on the lane (so a lane's order is the worker's order).
  # (its own methods both ways: each call then finds its method at the first class)
  registerS3method("recvData", "sshcluster_lane", function(node) {
    value <- unserialize(.subset2(node, "con"))
    if (!identical(value, LANE_BULK)) return(value)
    bulk <- .subset2(node, "bulk")
    if (is.null(bulk_mode)) bulk_mode <<- rawToChar(read_raw(bulk, 1L))
    if (identical(bulk_mode, "F")) stored_message(bulk) else unserialize(bulk)
  }, envir = asNamespace("parallel"))
  # A big message from relay.pl: its notice on the relay's socket, then (kind 1) the
  # message read from its file (opened, then the relay told so, ACK: it may then let
  # the file go; a file that cannot be opened, NAK: the relay sends it on the socket),
  # or (kind 3: no room for a file) the message itself, on that socket.
  stored_message <- function(bulk) {
    h <- read_raw(bulk, 16L)
    kind <- if (length(h) == 16L) readBin(h[1:4], "integer", size = 4L, endian = "big")
    if (!isTRUE(kind %in% c(1L, 3L)))
      stop("sshcluster: the relay on ", Sys.info()[["nodename"]], " has ended", call. = FALSE)
    if (kind == 3L) return(unserialize(bulk))
    path <- rawToChar(read_raw(bulk, readBin(h[5:8], "integer", size = 4L, endian = "big")))
    con <- tryCatch(file(path, "rb", raw = TRUE), error = function(e) NULL)
    writeBin(as.raw(if (is.null(con)) 21L else 6L), bulk)
    if (is.null(con))
      return(unserialize(read_raw(bulk, readBin(h[9:16], "double", size = 8L, endian = "big"))))
    on.exit(close(con))
    unserialize(con)
  }
  registerS3method("sendData", "sshcluster_lane", function(node, data)
    serialize(data, .subset2(node, "con"), xdr = FALSE), envir = asNamespace("parallel"))
  registerS3method("sendData", "sshcluster_relayed", function(node, data)
    to_primary(node$out, node$lock, node$slot, serialize(data, NULL, xdr = FALSE)),
    envir = asNamespace("parallel"))
  # The lock: a pipe opened by name in a directory only this user can enter, whose
  # name is gone at once (only this R and its forks hold it).
  # (A second, non-blocking handle lets the relay take it only when it is free: the
  # relay never waits for a worker, whose write may wait for the primary to read.)
  host_lock <- function() {
    d <- file.path(dirname(tempdir()), paste0("sshcluster-relay-", Sys.getpid(), "-",
                                              paste(random_bytes(6L), collapse = "")))
    if (!dir.create(d, mode = "0700") || file.info(d)$mode != as.octmode("700"))
      fail("could not make a private directory for the relay's lock on ",
           Sys.info()[["nodename"]], " (", d, ")")
    on.exit(unlink(d, recursive = TRUE))
    lock <- fifo(file.path(d, "lock"), open = "w+b", blocking = TRUE)
    attr(lock, "try") <- fifo(file.path(d, "lock"), open = "w+b", blocking = FALSE)
    writeBin(as.raw(1L), lock)
    flush(lock)
    lock
  }
  # Two connected sockets on this host: R has no socketpair(), so a listener on a
  # random port takes one connection and keeps it only if it sends a fresh secret (a
  # stranger's is closed); the listener is closed at once.
  local_pair <- function() {
    for (i in 1:200) {
      port <- 20000L + sum(as.integer(random_bytes(2L)) * c(256L, 1L)) %% 40000L
      l <- tryCatch(suppressWarnings(serverSocket(port)), error = function(e) NULL)
      if (!is.null(l)) break
    }
    if (is.null(l)) fail("no free local port for the relay on ", Sys.info()[["nodename"]])
    on.exit(close(l))
    a <- socketConnection("127.0.0.1", port, blocking = TRUE, open = "a+b", timeout = 5,
                          options = "no-delay")
    secret <- random_bytes(16L)
    writeBin(secret, a)
    for (i in 1:20) {
      before <- socket_fds()
      b <- socketAccept(l, blocking = TRUE, open = "a+b", timeout = 5, options = "no-delay")
      fd <- new_fd(before)
      if (socketSelect(list(b), timeout = 2) && identical(readBin(b, "raw", 16L), secret)) {
        socketTimeout(b, 2592000)  # (a worker may take its time between two halves)
        return(list(a, b, fd = fd))
      }
      close(b)
    }
    fail("could not connect the relay on ", Sys.info()[["nodename"]], " to its workers")
  }
  # This R's sockets, "FD socket:[INODE]" (/proc/self/fd): relay.pl inherits the
  # relay's, and is told which descriptor is which. (A socket made between two looks is
  # the one of the two that is new; a number reused meanwhile has another inode.)
  socket_fds <- function() {
    if (!stored) return(character())
    fds <- list.files("/proc/self/fd")
    links <- Sys.readlink(file.path("/proc/self/fd", fds))
    paste(fds, links)[!is.na(links) & startsWith(links, "socket:")]
  }
  new_fd <- function(before) {
    fd <- sub(" .*", "", setdiff(socket_fds(), before))
    if (length(fd) == 1L) fd else NA_character_
  }
  # relay.pl, for big messages (stored): kept in a file on the host once, where its
  # workers read it. A tmpfs first (/dev/shm), then R's temporary directory's parent.
  # Its pipe and pid once it says it is ready (it has then told each worker, "F"), or
  # NULL where it cannot run (a perl older than 5.10, which reads no big-endian
  # doubles; one that fails): the relay is then this R.
  relay_files <- function(pfd, fds, slots) {
    dirs <- c(if (file.access("/dev/shm", 3L) == 0L) "/dev/shm", dirname(tempdir()))
    con <- tryCatch(pipe(paste(
      "exec", shQuote(Sys.which("perl")), "-e", shQuote(RELAY_PL), shQuote(R.version$arch),
      pfd, paste(shQuote(dirs), collapse = " "), "--",
      paste(slots, fds, sep = ":", collapse = " "), "2>/dev/null"), "r"), error = function(e) NULL)
    said <- if (!is.null(con)) tryCatch(readLines(con, n = 1L, warn = FALSE),
                                        error = function(e) character())
    if (length(said) == 1L && grepl("^ready [0-9]+$", said))
      return(list(con = con, pid = as.integer(sub("ready ", "", said, fixed = TRUE))))
    if (!is.null(con)) close(con)
    NULL
  }
  relay <- function(P, lock, ends, slots, pids, collect) {
    # (behind lanes the primary knows its workers' pids from their own handshakes)
    if (!lanes) to_primary(P, lock, 0L, int4(rbind(slots, pids)))
    live <- rep(TRUE, length(ends))
    last <- raw(0)
    # A worker the relay can no longer reach is ended, so that its host reports it
    # (a write that makes no progress only warns in R).
    drop <- function(k, kill = TRUE) {
      live[k] <<- FALSE
      if (kill) tools::pskill(pids[k], tools::SIGKILL)
    }
    to_worker <- function(slot, m) {
      k <- match(slot, slots)
      if (!is.na(k) && live[k] && !tryCatch({
        writeBin(m, ends[[k]])
        TRUE
      }, warning = function(w) FALSE, error = function(e) FALSE)) drop(k)
    }
    take <- function() length(tryCatch(readBin(attr(lock, "try"), "raw", 1L),
                                       error = function(e) raw(0))) == 1L
    give <- function() {
      writeBin(as.raw(1L), lock)
      flush(lock)
    }
    echoes <- 0L  # asked for and not yet sent (the lock was taken)
    # A worker that ended otherwise than by DONE may have held the lock: if it cannot
    # be taken within 10 s, the host's connection is given up (its other workers
    # could never answer again; the primary names the host). (Another worker that
    # holds it that long, writing an answer the primary does not read, is taken for
    # that: the host is then lost too, and named.)
    suspect <- NULL
    while (any(live)) {
      # (and only while the connection takes it at once: the relay never blocks on it)
      while (echoes > 0L && take()) {
        if (!socketSelect(list(P), write = TRUE, timeout = 0)) {
          give()
          break
        }
        writeBin(c(int4(0L), head8(0)), P)
        give()
        echoes <- echoes - 1L
      }
      if (!is.null(suspect)) {
        if (take()) {
          give()
          suspect <- NULL
        } else if (Sys.time() > suspect) {
          fail("a worker on ", Sys.info()[["nodename"]], " ended while it held the ",
               "connection to the primary; the host's other workers stop with it")
        }
      }
      open <- which(live)
      ready <- socketSelect(c(list(P), ends[open]),
                            timeout = if (echoes || !is.null(suspect)) 0.05 else 1)
      if (ready[1]) {
        h <- readBin(P, "raw", 12L)
        if (length(h) < 12L) break  # the primary closed the connection
        slot <- readBin(h[1:4], "integer", size = 4L, endian = "big")
        len <- readBin(h[5:12], "double", size = 8L, endian = "big")
        if (slot > 0L) {
          last <- read_raw(P, len)
          if (length(last) < len) break
          to_worker(slot, last)
        } else if (slot < 0L) to_worker(-slot, last)
        else echoes <- echoes + 1L
      }
      # (a worker writes nothing to the relay: its end is readable when it ends, and
      # it may still be cleaning up)
      for (k in open[ready[-1]])
        if (live[k] && !length(readBin(ends[[k]], "raw", 1L))) drop(k, kill = FALSE)
      if ((!all(live) || !ready[1]) && collect(0)) suspect <- Sys.time() + 10
    }
    close(P)
    for (end in ends) close(end)
  }

  if (!fork) {
    work(items[1])
  } else {
    # One R start-up for the whole host. Each fork gets its own tempdir() and an
    # empty global environment (this code runs in a function), as a fresh R would.
    unlink(tempdir(), recursive = TRUE)
    child <- function(item, con = NULL, others = list(), relayed = NULL) {
      for (other in others) close(other)
      tempdir(check = TRUE)
      on.exit(unlink(tempdir(), recursive = TRUE))
      # mcparallel() gives a child a pipe from its parent as stdin, never closed:
      # a worker reads end-of-file there, as a fresh one does (system("cat")).
      closeFD(0L)
      stdin_null <- file("/dev/null", "r")
      on.exit(close(stdin_null), add = TRUE)
      work(item, con, relayed)
    }
    # (silent: a fork's stdout goes to /dev/null, unless the primary prints it)
    ends <- list()
    jobs <- list()
    # Behind a relay, its connection first: the workers inherit it, and the lock.
    if (!is.null(relay_item)) {
      before <- socket_fds()
      P <- handshake(strsplit(relay_item, ":", fixed = TRUE)[[1]])
      pfd <- new_fd(before)
      fds <- character()
      socketTimeout(P, 2592000)
      lock <- host_lock()
      unlink(tempdir(), recursive = TRUE)  # (the proof's hashes made it again)
    }
    for (item in items) {
      if (is.null(relay_item)) {
        jobs[[length(jobs) + 1L]] <- parallel::mcparallel(child(item),
                                                           silent = output != "console")
        next
      }
      # The relay: a connection to each worker (its other end is the worker's only
      # one), made before the fork; the worker holds none of the relay's ends.
      # With lanes, the worker connects to the primary itself, and does not hold the
      # relay's connection.
      pair <- local_pair()
      jobs[[length(jobs) + 1L]] <- parallel::mcparallel(if (lanes)
        child(item, NULL, c(ends, pair[2], list(P)), list(bulk = pair[[1]])) else
        child(item, pair[[1]], c(ends, pair[2]), list(out = P, lock = lock, slot = as.integer(
          strsplit(item, ":", fixed = TRUE)[[1]][1]))), silent = output != "console")
      close(pair[[1]])
      ends[[length(ends) + 1L]] <- pair[[2]]
      fds <- c(fds, pair$fd)
    }
    # Report each worker that ends, at once, on the ssh session's stdout (the
    # script's descriptor 4): "gone SLOT STATUS".
    slots <- setNames(vapply(items, function(item) strsplit(item, ":", fixed = TRUE)[[1]][1],
                             ""), vapply(jobs, function(j) as.character(j$pid), ""))
    # (raw: R would otherwise warn, at its exit, that this is a pipe, and that warning
    # would end up in the last words that name why a host failed)
    report <- tryCatch(file("/dev/fd/4", "w", raw = TRUE), error = function(e) NULL)
    failed <- FALSE
    collect <- function(timeout) {
      done <- suppressWarnings(parallel::mccollect(jobs, wait = FALSE, timeout = timeout))
      bad <- FALSE
      for (pid in names(done)) {
        ok <- isTRUE(done[[pid]])
        bad <- bad || !ok
        failed <<- failed || !ok
        if (!is.null(report)) {
          cat(GONE, slots[[pid]], if (ok) 0L else 3L, "\n", file = report)
          flush(report)
        }
      }
      jobs <<- Filter(function(j) !(as.character(j$pid) %in% names(done)), jobs)
      invisible(bad)
    }
    files <- NULL
    if (lanes) {
      # relay.pl where it can run and be told its descriptors, else this R; each worker
      # is told which by the first byte on its socket from the relay.
      if (stored && !is.na(pfd) && !anyNA(fds)) files <- relay_files(pfd, fds, slots)
      if (is.null(files))
        for (end in ends) tryCatch(writeBin(charToRaw("S"), end), error = function(e) NULL)
    }
    if (!is.null(files)) {
      close(P)  # (relay.pl holds them now)
      for (end in ends) close(end)
    } else if (!is.null(relay_item)) relay(P, lock, ends, as.integer(slots),
                                           vapply(jobs, function(j) j$pid, 1L), collect)
    while (length(jobs)) collect(1)
    if (!is.null(files)) {
      # (its own child, not yet waited for: the pid is still relay.pl's)
      tools::pskill(files$pid, tools::SIGTERM)
      close(files$con)
    }
    if (failed) quit(save = "no", status = 3L)
  }
})()
