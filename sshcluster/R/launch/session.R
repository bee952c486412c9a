# ---------------------------------------------------------------------------
# One host's session: its tokens, its ssh command, and the supervisor's protocol

TOKEN_SIZE <- 16L          # each slot's key is its two tokens (see proof.R)

# How fast a lost host is noticed. These values are what users get; a test of a fault
# may shorten them with options() before source() (sshcluster.heartbeat_seconds and so
# on), and one test per fault keeps them.
# (Whole numbers: the host scripts count them down in the shell.)
timing <- function(name, default, unit = " of seconds") {
  value <- getOption(paste0("sshcluster.", name), default)
  if (!is.numeric(value) || length(value) != 1L || is.na(value) || value < 1 ||
      value > 86400 || value != round(value))
    stop(sprintf("sshcluster: option sshcluster.%s must be one whole number%s, 1 to 86400",
                 name, unit), call. = FALSE)
  as.integer(value)
}
HEARTBEAT_SECONDS <- timing("heartbeat_seconds", 10) # the supervisor's heartbeat to every host
SILENCE_SECONDS <- timing("silence_seconds", 40)     # a host stops its workers after this
                                                      # long without one
STALL_SECONDS <- timing("stall_seconds", 15) # a message that makes no progress for this
                                             # long (R waits it out twice when writing)
                                             # has failed
if (SILENCE_SECONDS < 2 * HEARTBEAT_SECONDS)
  stop("sshcluster: option sshcluster.silence_seconds must be at least twice ",
       "sshcluster.heartbeat_seconds (a host would stop its workers between two beats)",
       call. = FALSE)
# Our own ssh options: keepalive (a silent host ends the session after COUNT unanswered
# probes INTERVAL seconds apart), no terminal, and no connection shared with a master
# from the user's config (its keepalive and lifetime would not be the cluster's).
OUR_SSH <- c("-T", "-o", sprintf("ServerAliveInterval=%d",
                                 timing("keepalive_seconds", 5)),
             "-o", sprintf("ServerAliveCountMax=%d",
                           timing("keepalive_count", 3, "")),
             "-o", "ControlMaster=no", "-o", "ControlPath=none")

# Random bytes from the OS, as hex; R's own generator (and the user's
# .Random.seed) are not touched.
random_hex <- function(n) {
  con <- file("/dev/urandom", "rb", raw = TRUE)
  on.exit(close(con))
  paste(as.character(readBin(con, "raw", n)), collapse = "")
}

hex_bytes <- function(hex) {
  at <- seq(1L, nchar(hex), by = 2L)
  as.raw(strtoi(substring(hex, at, at + 1L), 16L))
}

# Whether a session of n workers runs them behind its host's relay (worker.R): with
# forked workers and more than one of them, unless the inventory says relay: false.
# The relay's connection carries a big message sent to several of them once; with
# lanes (S$lanes, where R's connections allow it) each worker also has a connection
# of its own, for everything else; without, the relay's carries all of their
# messages. A relay's R holds a connection per worker, of
# R's 128: a host with more workers gets a session (and a relay) per relay_most of
# them (not with lease: true, whose lease is one session's).
relayed <- function(config, n) isTRUE(config$relay) && isTRUE(config$fork) && n >= 2L &&
  n <= config$relay_most
relay_parts <- function(config, slots) {
  if (length(slots) <= config$relay_most || !isTRUE(config$relay) || !isTRUE(config$fork) ||
      isTRUE(config$lease)) return(list(slots))
  unname(split(slots, ceiling(seq_along(slots) / config$relay_most)))
}

# Starts a session on machine h for the given worker slots; returns its id. Behind
# a relay, the relay's own key is that of slot -part (part: which of the host's
# relays it is, when relay_parts() gave the host several; the launch tells them
# apart by it).
start_host <- function(S, h, slots, part = 1L) {
  S$next_id <- S$next_id + 1L
  id <- sprintf("%d.%d", h, S$next_id)
  relay <- relayed(S$config, length(slots))
  lanes <- relay && S$lanes
  tokens <- lapply(c(if (relay) -part, slots), function(slot) list(
    slot = slot, worker = random_hex(TOKEN_SIZE), primary = random_hex(TOKEN_SIZE)))
  if (relay && !lanes) S$relayed <- TRUE
  S$sessions[[id]] <- list(id = id, h = h, slots = slots, tokens = tokens, relay = relay,
                           lanes = lanes, file = file.path(S$dir, id),
                           port = session_port(S, h))
  write_remote_script(S)
  writeLines(host_command(S, h, id), paste0(file.path(S$dir, id), ".sh"))
  # (the relay's token says "lanes" when its workers are to connect themselves too, and
  # then "stream" where options(sshcluster.relay_files = FALSE) has the relay hand big
  # messages on through its workers' sockets, not keep them in a file they read)
  line <- paste(vapply(tokens, function(t) paste(c(t$slot, t$worker, t$primary,
    if (lanes && t$slot <= 0L) c("lanes", if (identical(
      getOption("sshcluster.relay_files"), FALSE)) "stream")), collapse = ":"), ""),
    collapse = ",")
  supervise(S, paste("start", id, line, if (S$config$tunnel) "tunnel" else "direct"))
  id
}

# The port a session's workers connect to on their host. Direct: the primary's
# own. Behind a reverse tunnel each session asks its host's sshd to listen on a
# port of its own: a host's first session on the primary's port, any later one
# (a repair's) on a port that no earlier session to that host used, since a
# sibling session may still hold its port, and so may the host's sshd for the
# session of a host that was cut off, until it notices the cut.
session_port <- function(S, h) {
  if (!S$config$tunnel) return(S$port)
  used <- c(S$port, unlist(lapply(Filter(function(s) s$h == h, S$sessions), `[[`, "port")))
  # (A detached job's primary R runs on one of the hosts, where its own port is
  # taken by itself: there every session asks for a port of its own.)
  if (length(used) == 1L && !isTRUE(S$config$own_ports)) return(S$port)
  range <- S$config$port_range
  free <- setdiff(seq(range[1], range[2]), used)
  free[strtoi(random_hex(3L), 16L) %% length(free) + 1L]
}

# One shell word: single quotes, a single quote written as '\'' and a ! as '\!'
# (csh and tcsh expand ! even inside single quotes, and even in "csh -c"; every other
# shell reads \! outside quotes as !). The same word in sh, bash, csh, tcsh and fish,
# for text without a backslash (the inventory refuses one in what reaches a host).
# (R's own shQuote() switches to double quotes when the text has a single quote.)
sq <- function(x) {
  x <- gsub("'", "'\\''", x, fixed = TRUE)
  paste0("'", gsub("!", "'\\!'", x, fixed = TRUE), "'")
}

supervise <- function(S, command) {
  if (!supervisor_ok(S)) stop(SUPERVISOR_CLOSED, call. = FALSE)
  writeLines(command, S$supervisor)
  flush(S$supervisor)
}

# Whether the pipe to the supervisor is still open and still ours; it is forgotten if
# not. The user's closeAllConnections() closes it, and R then gives its number to the
# next connection opened, a file of the user's, say: a command (or the "stop" of
# sshcluster_stop(), a new source() or R's exit) would go into that file, and the close
# after it would close the file. Nothing is lost by forgetting it: R's close of the pipe
# ended the supervisor's stdin (and waited for the supervisor to end), and on that end
# the supervisor ends every session, whose hosts then stop their workers
# (supervisor.sh, remote.sh).
supervisor_ok <- function(S) {
  if (!is.null(S$supervisor) && !con_ok(S$supervisor)) S$supervisor <- NULL
  !is.null(S$supervisor)
}
SUPERVISOR_CLOSED <- paste(
  "sshcluster: this cluster's connections were closed (closeAllConnections()?), which",
  "ended its ssh sessions and stopped its workers; source() the file again for a new cluster")

# What every host's session reads first on its stdin (the supervisor sends it):
# the host's script, with the workers' R code in $code, then the end-of-script
# line. The command line ssh runs (cfg$read_script, see read_script.sh) only reads
# and runs it, so that any login shell runs it alike. (Written again if a cleaner
# of temporary files took it, for a repair's relaunch.)
write_remote_script <- function(S) {
  f <- file.path(S$dir, "remote.txt")
  if (!file.exists(f))
    writeLines(c(paste0("code=", sq(S$config$worker_code)), S$config$remote_script,
                 S$config$end_of_script), f)
}

# The shell script that runs machine h's ssh for session id, and records its
# pid and exit status. (Kept apart from the accept loop below, as parallelly
# keeps makeNodePSOCK() apart from makeClusterPSOCK().)
host_command <- function(S, h, id) {
  cfg <- S$config
  m <- cfg$machines[[h]]
  f <- function(ext) sq(paste0(file.path(S$dir, id), ext))
  port <- S$sessions[[id]]$port
  remote <- remote_command(S, h, port)
  forward <- if (cfg$tunnel)
    sprintf("-o ExitOnForwardFailure=yes -R 127.0.0.1:%d:127.0.0.1:%d", port, S$port)
  ssh <- paste(if (is.null(cfg$host_ssh[[h]])) cfg$ssh else cfg$host_ssh[[h]],
               S$known_hosts)
  destination <- paste(if (!is.null(m$user)) paste("-l", sq(m$user)), sq(m$host))
  # A TERM (the supervisor's: its way to end a session, also once the directory
  # and its pid files are gone) is passed on to ssh; a wait it cut short is waited
  # again, so that .status holds ssh's own status.
  c("exec 3<&0",
    "pid=''",
    "trap '[ -n \"$pid\" ] && kill -s TERM \"$pid\" 2>/dev/null' TERM",
    paste(ssh, paste(OUR_SSH, collapse = " "), forward, destination, sq(remote),
          "<&3 >", f(".out"), "2>", f(".err"), "&"),
    "pid=$!",
    paste("echo \"$pid\" >", f(".pid")),
    "wait \"$pid\"; rc=$?",
    "while [ \"$rc\" -gt 128 ] && kill -s 0 \"$pid\" 2>/dev/null; do wait \"$pid\"; rc=$?; done",
    paste("echo \"$rc\" >", f(".tmp"), "&& mv", f(".tmp"), f(".status")))
}

# The one line ssh hands machine h's login shell (sh, bash, csh, tcsh or fish): single-
# quoted words only, and no value holds a backslash (the inventory refuses one; fish
# reads \\ and \' inside single quotes), so every such shell reads the same words.
remote_command <- function(S, h, port) {
  cfg <- S$config
  m <- cfg$machines[[h]]
  rscript <- if (is.null(m$rscript)) "Rscript" else m$rscript
  master <- if (cfg$tunnel) "127.0.0.1" else cfg$workers_reach
  # (remote.sh makes the workdir and starts the workers in it)
  env <- c(locale_assignments(cfg$locale), paste0("SSHCLUSTER_OUTPUT=", cfg$worker_output),
           if (!is.null(cfg$workdir)) paste0("SSHCLUSTER_WORKDIR=", cfg$workdir),
           container_assignments(S, h),
           if (isTRUE(cfg$lease)) paste0("SSHCLUSTER_LEASE=", S$lease))
  paste(
    "exec sh -c", sq(cfg$read_script),
    "sshcluster", sq(rscript), sq(master), port, h, cfg$setup_timeout,
    if (cfg$tunnel) "tunnel" else "direct", if (cfg$fork) "fork" else "fresh",
    SILENCE_SECONDS, paste(sq(env), collapse = " "))
}

# NAME=VALUE for machine h's container (sshcluster/containers/container.sh), if it
# has one. Its name: the cluster's (its launch directory's) and the host's, and the
# session's, since a repair's session may start while the old one's is going.
container_assignments <- function(S, h) {
  box <- S$config$containers[[h]]
  if (is.null(box)) return(character())
  cluster <- sub("^sshcluster-", "", basename(S$dir))
  host <- gsub("[^A-Za-z0-9_.-]", "-", S$config$machines[[h]]$host)
  c(paste0("SSHCLUSTER_CONTAINER=", box$engine),
    paste0("SSHCLUSTER_CONTAINER_IMAGE=", box$image),
    paste0("SSHCLUSTER_CONTAINER_PULL=", box$pull),
    paste0("SSHCLUSTER_CONTAINER_OPTIONS=", box$options),
    paste0("SSHCLUSTER_CONTAINER_NAME=",
           sprintf("sshcluster-%s-%s-%d", cluster, host, S$next_id)))
}

session_ended <- function(S, id) file.exists(paste0(S$sessions[[id]]$file, ".status"))

# What ssh said when session id ended: its status and its last words.
session_reason <- function(S, id) {
  f <- S$sessions[[id]]$file
  status <- read_text(paste0(f, ".status"))
  err <- read_text(paste0(f, ".err"))
  sprintf("ssh exited with status %s%s", if (nzchar(status)) status else "?",
          if (nzchar(err)) paste0(": ", err) else "")
}

# A file's last lines, each once, as one line. (ssh's stderr holds its own words
# and sshcluster's, but may also hold whatever the workers' programs printed: the
# end is what explains how the session ended.)
read_text <- function(path, last = 4L) {
  text <- if (file.exists(path)) readLines(path, warn = FALSE) else character()
  text <- unique(trimws(text[nzchar(trimws(text))]))
  paste(utils::tail(text, last), collapse = " / ")
}
