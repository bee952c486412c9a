# ---------------------------------------------------------------------------
# What both launches share: replacing the cluster of an earlier source(), and
# registering the cluster with foreach and future.
# ---------------------------------------------------------------------------

# Every fast launch of this R session, by id, for every cluster file sourced in it
# (each has its own copy of this code): options() is the one place they all see.
launches <- function() {
  registry <- getOption("sshcluster.launches")
  if (!is.environment(registry)) {
    registry <- new.env()
    options(sshcluster.launches = registry)
  }
  registry
}

# The file being source()d, as source() was given it, or "" where this code runs some
# other way (Rscript FILE, eval(parse())): a launch is known by it.
sourced_file <- function() {
  for (i in rev(seq_len(sys.nframe()))) if (identical(sys.function(i), base::source)) {
    f <- get0("ofile", envir = sys.frame(i), inherits = FALSE)
    if (is.character(f) && length(f) == 1L) return(normalizePath(f, mustWork = FALSE))
  }
  ""
}

# Sourcing a cluster file again stops the cluster an earlier source() of the same file
# started (also when its names in the global environment were removed: the cluster
# lives on). Clusters of other files live on. Returns what was registered with the
# stopped cluster ("doparallel", "future"), for the new cluster to take over.
stop_previous <- function(key) {
  running <- mget(ls(launches()), envir = launches())
  mine <- Filter(function(S) identical(S$key, key) && is.function(S$stop), running)
  if (!length(mine)) return(character())
  message("sshcluster: stopping the cluster that an earlier source() of this file started")
  found <- unique(unlist(lapply(mine, registered)))
  for (S in mine) S$stop()
  found
}

# Whether x is (a copy, from before a repair, of) launch S's cluster.
belongs <- function(x, S) {
  if (!inherits(x, "cluster")) return(FALSE)
  if (inherits(x, "sshcluster"))
    return(any(vapply(unclass(x), function(n) identical(n$launch, S$id), NA)))
  identical(unclass(x), unclass(S$cluster))
}

# What foreach (doParallel) and future's plan() use now, if it is launch S's cluster:
# a repair or a new source() registers its new cluster there again.
registered <- function(S) {
  found <- character()
  if (isNamespaceLoaded("foreach")) {
    globals <- get0(".foreachGlobals", envir = asNamespace("foreach"))
    if (is.environment(globals) && belongs(globals$data, S)) found <- "doparallel"
  }
  if (isNamespaceLoaded("future")) {
    workers <- tryCatch(formals(future::plan("next"))$workers, error = function(e) NULL)
    if (belongs(workers, S)) found <- c(found, "future")
  }
  found
}

# Loads the packages the registrations `what` need (`needs_of`: the packages of each, from
# the config), here and on every worker of cl (the launch calls it once sshcluster's
# library is first there), and stops naming each host that cannot, with R's reason:
# not future's or foreach's own error later, about one worker. Returns cl; a package
# is loaded once in each R, so nothing is lost.
check_register <- function(what, cl, needs_of) {
  needs <- unique(unlist(needs_of[intersect(what, names(needs_of))]))
  if (!length(needs)) return(invisible(cl))
  load <- function(needs) vapply(needs, function(p) tryCatch({
    loadNamespace(p)
    ""
  }, error = function(e) conditionMessage(e)), "")
  environment(load) <- baseenv()  # (sent to the workers: nothing of the launch's)
  said <- c(list(load(needs)), parallel::clusterCall(cl, load, needs))
  where <- c("this machine (the primary)", vapply(cl, function(node) {
    host <- node[["host"]]
    if (is.character(host) && length(host) == 1L) host else "?"
  }, ""))
  lines <- character()
  for (i in seq_along(said)) for (p in needs[nzchar(said[[i]])])
    lines <- c(lines, sprintf("  %s: %s: %s", where[[i]], p,
                              gsub("[[:space:]]+", " ", said[[i]][[p]])))
  lines <- unique(lines)
  if (length(lines)) {
    them <- if (length(needs) > 1L) "them" else "it"
    stop(sprintf(paste0(
      "sshcluster: register: %s needs %s here and on every worker; R could not load ",
      "%s on:\n%s\nInstall %s there (or add %s to r_packages and run 'sshcluster sync'), ",
      "or leave the registration out"),
      paste(intersect(what, names(needs_of)), collapse = ", "),
      paste(needs, collapse = " and "), them, paste(lines, collapse = "\n"), them, them),
      call. = FALSE)
  }
  invisible(cl)
}

register <- function(what, cl) {
  if ("doparallel" %in% what) doParallel::registerDoParallel(cl)
  if ("future" %in% what) future::plan(future::cluster, workers = cl)
}

# Whether this machine's ssh is an OpenSSH older than major.minor (FALSE when its
# version cannot be told: a recent one is assumed).
ssh_before <- function(major, minor) {
  version <- tryCatch(system2("ssh", "-V", stdout = TRUE, stderr = TRUE),
                      error = function(e) "", warning = function(w) "")
  m <- regmatches(version, regexec("OpenSSH_([0-9]+)[.]([0-9]+)", version))[[1]]
  length(m) == 3L && (as.integer(m[2]) < major ||
                      (as.integer(m[2]) == major && as.integer(m[3]) < minor))
}

# The option that adds the inventory's known_hosts file, in the form this
# machine's ssh takes (KnownHostsCommand came with OpenSSH 8.5); "" without one.
known_hosts_words <- function(forms) {
  if (is.null(forms)) return("")
  forms[[if (ssh_before(8L, 5L)) "before_8_5" else "current"]]
}

# What a user's ssh config may set for interactive use that would break the launch,
# set back (a command line's -o comes first, and ssh keeps the first value) where this
# ssh knows them (OpenSSH 8.7): StdinNull (the host's script goes on ssh's stdin) and
# ForkAfterAuthentication (ssh would go to the background). The same words as
# SESSION_OVERRIDES_8_7 in sshcluster/ssh/command.py.
ssh_overrides <- function() {
  if (ssh_before(8L, 7L)) "" else "-o StdinNull=no -o ForkAfterAuthentication=no"
}

# The locale variables the launch hands each host (LOCALE_VARS in sshcluster/protocol.py).
LOCALE_VARS <- c("LANG", "LC_ALL", "LC_CTYPE", "LC_COLLATE", "LC_TIME", "LC_MONETARY",
                 "LC_MESSAGES", "LC_PAPER", "LC_MEASUREMENT")
# NAME=VALUE for the workers' locale: the primary's own, unless the inventory
# names one. (A host that lacks it gives its workers C.UTF-8 or C instead: locale.sh
# in the fast launch, classic_locale() in the classic one. The check starts its R
# with the same, see sshcluster/check/locale.py.)
locale_assignments <- function(locale) {
  # (the inventory's in LANG, every other variable emptied: one that ssh sent, SendEnv
  # LC_*, would else win over it)
  if (!is.null(locale))
    return(c(paste0("LANG=", locale), paste0(setdiff(LOCALE_VARS, "LANG"), "=")))
  values <- Sys.getenv(LOCALE_VARS)
  # (only what a locale name holds: these reach every host's login shell)
  values <- values[grepl("^[A-Za-z0-9_.@-]+$", values)]
  if (length(values)) paste0(names(values), "=", values) else character()
}
