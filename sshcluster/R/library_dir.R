# sshcluster: where sshcluster's library for one environment is on this host:
# ROOT/R-x.y/PLATFORM/OS/DIGEST, x.y this R's minor version, PLATFORM its
# R.version$platform, OS the ID-VERSION_ID of /etc/os-release ("unknown" without one;
# the release as its ABI goes: the major version only in the Red Hat, Fedora and SUSE
# families, whose point releases (9.3, 9.4; 15.5) keep it, else at most two parts:
# Alpine's 3.19.1 is 3.19; the same rule in sync.sh and reference.py).
# Builds made for one of them may not load on another, and hosts that share a home
# (NFS) may differ in each: each kind of host gets a library of its own there. The same
# function names it for sync (packages/R/sync.sh), the check and the workers.
sshcluster_library_dir <- function(root, digest) {
  rel <- if (file.exists("/etc/os-release"))
    tryCatch(readLines("/etc/os-release", warn = FALSE), error = function(e) character(0))
  field <- function(key) {
    v <- sub(paste0("^", key, "="), "", grep(paste0("^", key, "="), rel, value = TRUE))
    if (length(v)) gsub("^[\"']|[\"']$", "", v[[1]]) else ""
  }
  version <- field("VERSION_ID")
  version <- if (any(c("rhel", "fedora", "suse") %in%
                     strsplit(paste(field("ID"), field("ID_LIKE")), " +")[[1]]))
    sub("[.].*", "", version) else sub("^([^.]*[.][^.]*)[.].*$", "\\1", version)
  os <- paste(Filter(nzchar, c(field("ID"), version)), collapse = "-")
  word <- function(x) sub("^[.]", "_", gsub("[^A-Za-z0-9._+-]", "_", x))
  file.path(path.expand(root),
            paste0("R-", R.version$major, ".", sub("[.].*", "", R.version$minor)),
            word(R.version$platform), if (nzchar(os)) word(os) else "unknown", digest)
}
