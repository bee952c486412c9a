# sshcluster: the primary's R environment, the reference the hosts are compared with.
# Arguments: the r_packages names. Prints one KEY=value line per fact:
#   ENV_R, ENV_PLATFORM, REPOS (one per repository), and per package of the closure
#   (the names and their recursive Depends, Imports and LinkingTo, base packages left
#   out) PKG=name<TAB>version<TAB>installed directory, or ABSENT=name.
local({
  wanted <- commandArgs(TRUE)
  cat("ENV_R=", paste(R.version$major, R.version$minor, sep = "."), "\n",
      "ENV_PLATFORM=", R.version$platform, "\n", sep = "")
  for (r in getOption("repos")) cat("REPOS=", r, "\n", sep = "")
  ip <- utils::installed.packages(fields = "Built")
  # The first of .libPaths() wins, as it does for library().
  ip <- ip[!duplicated(ip[, "Package"]), , drop = FALSE]
  rownames(ip) <- ip[, "Package"]
  base <- rownames(ip)[!is.na(ip[, "Priority"]) & ip[, "Priority"] == "base"]
  deps_of <- function(p) {
    f <- ip[p, c("Depends", "Imports", "LinkingTo")]
    x <- trimws(sub("\\(.*", "", unlist(strsplit(f[!is.na(f)], ","))))
    setdiff(x[nzchar(x)], c("R", base))
  }
  seen <- character(0)
  todo <- setdiff(wanted, base)
  while (length(todo)) {
    p <- todo[[1]]
    todo <- todo[-1]
    if (p %in% seen) next
    seen <- c(seen, p)
    if (p %in% rownames(ip)) todo <- c(todo, setdiff(deps_of(p), seen))
  }
  for (p in seen) {
    if (p %in% rownames(ip))
      cat("PKG=", p, "\t", ip[p, "Version"], "\t", file.path(ip[p, "LibPath"], p), "\n",
          sep = "")
    else cat("ABSENT=", p, "\n", sep = "")
  }
})
