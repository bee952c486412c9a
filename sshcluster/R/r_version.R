# The oldest R a fast-launch worker runs on (its sockets need TCP no-delay: R 4.1), in
# one place: pasted first into the workers' code (worker.R stops on an older R before
# anything else) and into the check's R (check/R/probe.R), which fails such a host.
WORKER_MIN_R <- "4.1.0"
# Why this R cannot run the workers: a sentence, or NULL when it can.
r_too_old <- function() if (getRversion() < WORKER_MIN_R)
  paste0("R on ", Sys.info()[["nodename"]], " is ", as.character(getRversion()),
         "; the workers need R ", WORKER_MIN_R, " or later")
