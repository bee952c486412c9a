# sshcluster sync: every package of a new library loads, with the host's own R, before
# the library is renamed into place. Arguments: a file to create when all is well (""
# none), the library, then name=version pins. Prints HAVE=name version, and
# LOADFAIL=name<TAB>R's error for each that will not load.
local({
  a <- commandArgs(TRUE)
  mark <- a[[1]]
  lib <- a[[2]]
  pins <- do.call(rbind, strsplit(a[-(1:2)], "=", fixed = TRUE))
  pk <- pins[, 1]
  want <- stats::setNames(pins[, 2], pk)
  .libPaths(c(lib, .libPaths()))
  ok <- TRUE
  for (p in pk) {
    v <- tryCatch(read.dcf(file.path(lib, p, "DESCRIPTION"), "Version")[[1]],
                  error = function(e) "")
    cat("HAVE=", p, " ", v, "\n", sep = "")
    if (v != want[[p]]) {
      ok <- FALSE
      next
    }
    said <- tryCatch({
      loadNamespace(p)
      ""
    }, error = function(e) gsub("[\r\n]+ *", " ", conditionMessage(e)))
    if (nzchar(said)) {
      ok <- FALSE
      cat("LOADFAIL=", p, "\t", said, "\n", sep = "")
    }
  }
  if (ok && nzchar(mark)) invisible(file.create(mark))
})
