# sshcluster sync: install pinned versions from repositories into a new library.
# Arguments: the library, the repositories (space-separated), then name=version pins.
# A pinned version the repository no longer has as current comes from its Archive, as
# CRAN keeps it; binary repositories (a Package Manager URL) work as they are.
local({
  a <- commandArgs(TRUE)
  lib <- a[[1]]
  repos <- strsplit(a[[2]], " ", fixed = TRUE)[[1]]
  pins <- do.call(rbind, strsplit(a[-(1:2)], "=", fixed = TRUE))
  want <- stats::setNames(pins[, 2], pins[, 1])
  .libPaths(c(lib, .libPaths()))
  options(warn = 1)
  ap <- utils::available.packages(repos = repos)
  current <- names(want)[names(want) %in% rownames(ap) &
                           ap[match(names(want), rownames(ap)), "Version"] == want]
  if (length(current))
    utils::install.packages(current, lib = lib, repos = repos, dependencies = FALSE,
                            quiet = TRUE, Ncpus = max(1L, parallel::detectCores()))
  for (p in setdiff(names(want), current)) {
    url <- sprintf("%s/src/contrib/Archive/%s/%s_%s.tar.gz", repos[[1]], p, p, want[[p]])
    cat("ARCHIVE=", p, " ", want[[p]], "\n", sep = "")
    utils::install.packages(url, lib = lib, repos = NULL, type = "source", quiet = TRUE)
  }
})
