# sshcluster: what a host has of the cluster's R environment (the check's packages step).
# step_environment(pk, root, digest): pk the packages of the reference; sshcluster's
# own library for this environment is root/R-x.y/PLATFORM/OS/digest on this host (its own
# R's and OS release: sshcluster_library_dir, R/library_dir.R). Prints ENV_R,
# ENV_PLATFORM, ENV_LIB (the library, when it is there), ENV_LIB_MISSING (packages it
# lacks), one PKGV line
# per package (name, then its version, or nothing when it is not installed) and
# R_MISSING (the ones not installed, comma-separated).
step_environment <- function(pk, root, digest) {
  t0 <- Sys.time()
  cat("ENV_R=", paste(R.version$major, R.version$minor, sep = "."), "\n",
      "ENV_PLATFORM=", R.version$platform, "\n", sep = "")
  libs <- .libPaths()
  if (nzchar(digest)) {
    lib <- sshcluster_library_dir(root, digest)
    if (dir.exists(lib)) {
      # Complete when every package its manifest lists is in it, as the workers see it.
      listed <- readLines(file.path(lib, "SSHCLUSTER-MANIFEST"), warn = FALSE)
      lacking <- listed[!file.exists(file.path(lib, listed, "DESCRIPTION"))]
      cat("ENV_LIB=", lib, "\nENV_LIB_MISSING=", paste(lacking, collapse = ","), "\n",
          sep = "")
      libs <- c(lib, libs)
    }
  }
  missing <- character(0)
  for (p in pk) {
    where <- find.package(p, lib.loc = libs, quiet = TRUE)
    v <- if (length(where))
      tryCatch(read.dcf(file.path(where[[1]], "DESCRIPTION"), "Version")[[1]],
               error = function(e) NA_character_) else NA_character_
    if (is.na(v)) missing <- c(missing, p)
    cat("PKGV=", p, " ", if (is.na(v)) "" else v, "\n", sep = "")
  }
  cat("R_MISSING=", paste(missing, collapse = ","), "\nT_PACKAGES=",
      as.numeric(Sys.time() - t0, units = "secs"), "\n", sep = "")
  invisible(libs)  # (the check's step_loads: where the workers look)
}
