step_callback <- function(host, port, timeout, nonce) {
  t0 <- Sys.time()
  r <- tryCatch({
    con <- socketConnection(host, port, open = "a+b", blocking = TRUE, timeout = timeout)
    writeLines(nonce, con)
    flush(con)
    x <- readLines(con, n = 1L)
    close(con)
    if (identical(x, "ok")) "ok" else paste("the primary answered:",
                                           if (length(x)) x else "nothing")
  }, error = function(e) conditionMessage(e), warning = function(w) conditionMessage(w))
  cat("CALLBACK=", gsub("[\r\n]+", " ", r), "\nT_CALLBACK=",
      as.numeric(Sys.time() - t0, units = "secs"), "\n", sep = "")
}
