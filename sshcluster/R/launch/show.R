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

# Decided per node: a part of the cluster (parallelCluster[1:2]) is a cluster of its
# own, and shows only its hosts; a node is stale once a repair replaced it, or the
# cluster was stopped.
print.sshcluster <- function(x, ...) {
  nodes <- Filter(Negate(is.null), unclass(x))
  S <- if (length(nodes)) registry[[nodes[[1L]]$launch]]
  live <- vapply(nodes, function(n) {
    now <- if (!is.null(S)) node_of(S, n$rank)
    !is.null(now) && identical(now$con, n$con) && con_ok(n$con)
  }, NA)
  if (!length(nodes) || !all(live)) {
    cat(sprintf("sshcluster: a cluster of %d workers %s; ", length(x), if (any(live))
                  sprintf("of which %d %s stopped or replaced", sum(!live),
                          if (sum(!live) == 1L) "was" else "were") else
                  "that was stopped or replaced"),
        "source() the file again (or use sshcluster_repair()'s)\n", sep = "")
    return(invisible(x))
  }
  machines <- S$config$machines
  # (the whole cluster shows every host, those a repair went on without too)
  shown <- if (length(nodes) == length(Filter(Negate(is.null), unclass(S$cluster))))
    seq_along(machines) else sort(unique(vapply(nodes, `[[`, 1L, "h")))
  how <- c(if (isTRUE(S$config$tunnel)) "through ssh reverse tunnels" else
             "straight to this machine's port",
           if (isTRUE(S$config$fork)) "forked" else "one R each",
           if (isTRUE(S$relayed)) "a connection per host (relays)" else
             if (length(S$bulk)) "big messages once per host (relays)")
  cat(sprintf("sshcluster: %d workers on %d host%s, %s, port %d\n", length(nodes),
              length(shown), if (length(shown) == 1L) "" else "s",
              paste(how, collapse = ", "), S$port))
  hosts <- vapply(machines, `[[`, "", "host")
  width <- max(nchar(hosts[shown]))
  for (h in shown) {
    have <- sum(vapply(nodes, function(n) n$h == h, NA))
    about <- S$about[[as.character(h)]]
    cat(sprintf("  %-*s  %d of %d workers%s\n", width, hosts[h], have,
                as.integer(machines[[h]]$ncore),
                if (is.null(about)) "" else sprintf("  %s, %s", about[1], about[2])))
  }
  invisible(x)
}
registerS3method("print", "sshcluster", print.sshcluster, envir = parallel_ns)
