# worker_output: DIR on a host, shared by the workers (worker.R, which then write to the
# file) and the check (check/R/probe.R, which writes nothing): the directory, made if
# missing, and the file of this host's workers in it. One that cannot be written fails
# the host. Another user must not choose where the output goes: not in a directory
# anyone may write (without the sticky bit), and not into a file (or link) someone else
# put there. Returns list(log = the file), or list(why = the sentence that refuses it).
output_log <- function(output) {
  node <- Sys.info()[["nodename"]]
  # (made as the host's umask says, but never writable by the group or others:
  # Ubuntu's and Red Hat's sessions have umask 002, and a directory the group may write
  # would then be refused below; a umask of 077 keeps them the user's alone)
  made <- character()
  for (d in Reduce(function(a, b) file.path(a, b), strsplit(output, "/", fixed = TRUE)[[1]][-1],
                   accumulate = TRUE, ""))
    if (!dir.exists(d) && dir.create(d, showWarnings = FALSE)) made <- c(made, d)
  Sys.chmod(made, as.octmode(bitwAnd(511L, bitwNot(bitwOr(as.integer(Sys.umask(NA)), 18L)))),
            use_umask = FALSE)
  log <- file.path(output, paste0(node, ".log"))
  if (file.access(output, 2L) != 0L)
    return(list(why = paste0("cannot write the workers' output to ", output, " on ", node,
                             " (worker_output)")))
  mode <- as.integer(file.info(output, extra_cols = FALSE)$mode)
  link <- Sys.readlink(log)  # (NA: no such file; "": not a link)
  link <- !is.na(link) && nzchar(link)
  # (by uid: a uid with no name, in a container say, is still this user's)
  me <- file.info(tempdir(), extra_cols = TRUE)$uid
  info <- if (file.exists(log) || link) file.info(log, extra_cols = TRUE)
  why <- if (bitwAnd(mode, 18L) && !bitwAnd(mode, 512L))
    "others may write that directory (group or all)"
    else if (link) paste(log, "is a symbolic link")
    else if (!is.null(info) && !identical(info$uid, me))
      paste(log, "belongs to", if (is.na(info$uname)) "someone else" else info$uname)
  if (!is.null(why))
    return(list(why = paste0("will not write the workers' output to ", log, " on ", node,
                             ": ", why, " (worker_output: a directory of your own; ",
                             "chmod go-w it)")))
  list(log = log)
}
