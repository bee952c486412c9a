# ---------------------------------------------------------------------------
# sshcluster's classic launch: R's own parallel::makeCluster(), one ssh and one
# wait per worker, exactly as R users write it by hand.
#
# It cannot be protected as the fast launch is: makeCluster() reads, from
# anything that connects to its port while it waits for its workers, a
# serialized R object, which can run code on this machine. Use it only where
# nobody else can reach the primary's port (or use the fast launch).
# ---------------------------------------------------------------------------

start_classic <- function(config) {
  S <- new.env()
  S$key <- sourced_file()
  again <- stop_previous(S$key)
  # The ssh commands carry the known_hosts option for OpenSSH >= 8.5; an older
  # ssh here gets the other form.
  words <- known_hosts_words(config$known_hosts)
  # Without known_hosts: in the inventory there is nothing to swap: the keys come
  # from the user's own ssh setup. (And what a config may set for interactive use,
  # set back after the command's other options, as the fast launch does.)
  overrides <- ssh_overrides()
  fix <- function(cmd) if (is.null(cmd)) cmd else paste(
    if (is.null(config$known_hosts) || identical(words, config$known_hosts[["current"]]))
      cmd else sub(config$known_hosts[["current"]], words, cmd, fixed = TRUE), overrides)
  spec <- lapply(config$spec, function(entry) {
    entry$rshcmd <- fix(entry$rshcmd)
    entry
  })
  args <- list(type = "PSOCK", master = config$master, spec = spec,
               rshcmd = fix(config$rshcmd), homogeneous = FALSE)
  if (!is.na(config$port)) args$port <- config$port
  cl <- do.call(parallel::makeCluster, args)
  ready <- tryCatch({
    # makeCluster() has no way to start a worker elsewhere than in the login
    # directory, so each worker moves there before the user's first call;
    if (!is.null(config$workdir))
      parallel::clusterCall(cl, function(dir) {
        dir.create(dir, recursive = TRUE, showWarnings = FALSE)
        setwd(dir)
        invisible(NULL)
      }, config$workdir)
    # nor of giving it a locale: each takes the one the fast launch gives its workers
    # (the inventory's locale:, else the primary's);
    parallel::clusterCall(cl, classic_locale, locale_assignments(config$locale))
    # `sshcluster sync`'s library first, before register() loads anything (R/library.R);
    # a host without what register() needs is named. Whatever fails stops the cluster.
    if (!is.null(config$library)) use_library(cl, config$library)
    check_register(union(config$register$what, again), cl, config$register$needs)
    NULL
  }, error = function(e) e)
  if (!is.null(ready)) {
    for (i in seq_along(cl)) try(parallel::stopCluster(cl[i]), silent = TRUE)
    stop(ready)
  }
  S$cluster <- cl
  S$id <- basename(tempfile("classic"))
  S$stop <- function() {
    # Node by node, so that one dead worker does not keep the others running.
    for (i in seq_along(cl)) try(parallel::stopCluster(cl[i]), silent = TRUE)
    if (identical(get0("parallelCluster", envir = globalenv(), inherits = FALSE), cl))
      rm("parallelCluster", envir = globalenv())
    if (exists(S$id, envir = launches(), inherits = FALSE)) rm(list = S$id, envir = launches())
    invisible(NULL)
  }
  assign(S$id, S, envir = launches())
  assign("parallelCluster", cl, envir = globalenv())
  assign("sshcluster_stop", S$stop, envir = globalenv())
  register(union(config$register$what, again), cl)
  invisible(cl)
}

# Run on each classic worker: what R/locale.sh and R's start do for a fast launch's
# worker. Each NAME=VALUE is set, a locale this host lacks replaced by C.UTF-8 (else C),
# then every category R sets at its start is set again from the environment, which
# also holds what ssh passed (SendEnv). (Its environment is the base one: clusterCall()
# sends a function's environment along.)
classic_locale <- function(assignments) {
  has <- function(value) {
    if (value %in% c("", "C", "POSIX")) return(TRUE)
    old <- Sys.getlocale("LC_CTYPE")
    ok <- nzchar(suppressWarnings(Sys.setlocale("LC_CTYPE", value)))
    suppressWarnings(Sys.setlocale("LC_CTYPE", old))
    ok
  }
  for (kv in assignments) {
    name <- sub("=.*", "", kv)
    value <- substring(kv, nchar(name) + 2L)
    if (!has(value)) value <- if (has("C.UTF-8")) "C.UTF-8" else "C"
    do.call(Sys.setenv, structure(list(value), names = name))
  }
  # (each on its own, as R's start sets them: R's LC_ALL sets none of the others when
  # LC_CTYPE fails; LC_NUMERIC stays C)
  for (category in c("LC_CTYPE", "LC_COLLATE", "LC_MONETARY", "LC_TIME", "LC_MESSAGES",
                     "LC_PAPER", "LC_MEASUREMENT"))
    try(suppressWarnings(Sys.setlocale(category, "")), silent = TRUE)
  invisible(NULL)
}
environment(classic_locale) <- baseenv()
