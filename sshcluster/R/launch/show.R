# ---------------------------------------------------------------------------
# What print(parallelCluster) shows: each host with its workers, R version and
# platform, as parallelly's clusters show them, and how the cluster was launched.
# The hosts' R is asked once, right after the launch (one call to one worker per
# host), so that printing never sends anything to a cluster that may be busy.

# R's version and platform on each host: a list by machine index.
about_hosts <- function(S) {
  nodes <- Filter(Negate(is.null), unclass(S$cluster))
  first <- nodes[!duplicated(vapply(nodes, `[[`, 1L, "h"))]
  if (!length(first)) return(list())
  said <- tryCatch(parallel::clusterCall(structure(first, class = class(S$cluster)),
                                         function() c(R.version.string, R.version$platform)),
                   error = function(e) NULL)
  if (is.null(said)) return(list())
  setNames(said, vapply(first, function(n) as.character(n$h), ""))
}

print.sshcluster <- function(x, ...) {
  nodes <- Filter(Negate(is.null), unclass(x))
  S <- if (length(nodes)) registry[[nodes[[1L]]$launch]]
  if (is.null(S) || !identical(S$cluster, x)) {
    cat(sprintf("sshcluster: a cluster of %d workers that was stopped or replaced; ",
                length(x)), "source() the file again (or use sshcluster_repair()'s)\n",
        sep = "")
    return(invisible(x))
  }
  machines <- S$config$machines
  how <- c(if (isTRUE(S$config$tunnel)) "through ssh reverse tunnels" else
             "straight to this machine's port",
           if (isTRUE(S$config$fork)) "forked" else "one R each",
           if (isTRUE(S$relayed)) "a connection per host (relays)" else
             if (length(S$bulk)) "big messages once per host (relays)")
  cat(sprintf("sshcluster: %d workers on %d host%s, %s, port %d\n", length(nodes),
              length(machines), if (length(machines) == 1L) "" else "s",
              paste(how, collapse = ", "), S$port))
  hosts <- vapply(machines, `[[`, "", "host")
  width <- max(nchar(hosts))
  for (h in seq_along(machines)) {
    have <- sum(vapply(nodes, function(n) n$h == h, NA))
    about <- S$about[[as.character(h)]]
    cat(sprintf("  %-*s  %d of %d workers%s\n", width, hosts[h], have,
                as.integer(machines[[h]]$ncore),
                if (is.null(about)) "" else sprintf("  %s, %s", about[1], about[2])))
  }
  invisible(x)
}
registerS3method("print", "sshcluster", print.sshcluster, envir = parallel_ns)
