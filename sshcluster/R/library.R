# sshcluster: the workers load the packages of `sshcluster sync` first. Each worker puts
# sshcluster's library for this environment (ROOT/R-x.y/PLATFORM/OS/DIGEST for its own R
# and OS: R/library_dir.R) first on its .libPaths() when the library is there whole (its
# manifest is written before the rename that puts it in place); a host without it keeps
# its own libraries, which `sshcluster check` then names. The launch calls this as soon
# as its workers are there, before anything is registered (future::plan() loads future
# and its dependencies on the workers) or the user's code runs: a package a worker has
# loaded stays as it is whatever .libPaths() says later. `library` is
# list(roots = each host's ROOT, digest = DIGEST, here = TRUE where this R runs on one
# of the hosts: a detached job's, whose script then loads sync's packages too).
use_library <- function(cl, library) {
  where <- sshcluster_library_dir  # (R/library_dir.R: base R only)
  environment(where) <- baseenv()
  put_first <- function(roots, digest, where) {
    for (root in roots) {
      lib <- where(root, digest)
      if (file.exists(file.path(lib, "SSHCLUSTER-MANIFEST"))) {
        .libPaths(c(lib, .libPaths()))
        return(lib)
      }
    }
    NA_character_
  }
  environment(put_first) <- baseenv()  # (sent to the workers: nothing of the launch's)
  if (isTRUE(library$here)) put_first(library$roots, library$digest, where)
  first <- function(cl) parallel::clusterCall(cl, put_first, library$roots, library$digest,
                                              where)
  first(cl)
  # the workers that sshcluster_repair() starts again get it first too (fast launch)
  if (exists("on_new_workers", inherits = TRUE)) on_new_workers(cl, first)
  invisible(cl)
}
