# ---------------------------------------------------------------------------
# The proof a worker and the primary give each other: pasted into both sides.
#
# Each worker slot has a key (its two tokens, 32 random bytes) that only the
# primary and that slot's host know. A connection proves itself by challenge and
# response, never by showing the key:
#   worker  -> primary  hello: "SCW4", machine, slot, pid, a fresh nonce (16 bytes),
#                       and MAC(key, "hello" + those 32 bytes)
#   primary -> worker   a fresh nonce (16) and MAC(key, "primary" + hello + nonce)
#   worker  -> primary  MAC(key, "worker" + hello + nonce)
#   primary -> worker   ADMITTED (one byte), once that MAC is checked
# A worker that gets no ADMITTED (the primary gave up on a proof that came too
# late, from a host too busy to hash in time) connects and proves itself again.
# The worker checks the primary's MAC before it sends its own, so a peer without
# the key (a fake primary, a squatter on a forwarded port) learns only nonces and
# MACs of messages that never occur again: nothing it can replay, in this
# launch or another. The MACs differ in their first word, so one side's
# answer is never a valid answer for the other. The hello's own MAC lets the primary
# refuse at once a hello from a peer without the key (and a hello seen before, by
# its nonce): a stranger who sends hellos for the slots it can guess (machine and
# slot are small numbers) holds no place among the connections proving themselves,
# which genuine workers then wait behind.
#
# MAC is HMAC-MD5 (RFC 2104). Base R (4.1 onwards) has no hash of a raw vector
# in memory, only tools::md5sum() of files, so each hash goes through a file in
# R's own temporary directory (mode 0700: no other user can read it), removed at
# once. HMAC-MD5 is still a sound MAC (the known MD5 collisions do not give
# forgeries of HMAC with a secret key; RFC 6151), and it needs no package that a
# worker host may not have.
# ---------------------------------------------------------------------------

PROOF_MAGIC <- charToRaw("SCW4")
ADMITTED <- as.raw(0x06L)  # ASCII ACK
NONCE_SIZE <- 16L
MAC_SIZE <- 16L
HELLO_SIZE <- 48L          # magic, machine, slot, pid (4 bytes each), nonce (16), MAC (16)
# Besides the proof, both sides share one word: a host reports a worker's end
# on its session's stdout as "gone SLOT STATUS" (remote.sh for a worker that
# never started).
GONE <- "gone"
# Where a host's workers each have their own connection besides its relay's (a
# lane each; node.R), this value on a worker's lane says: the next message is on
# your connection from the relay (a big one, sent to the host once).
LANE_BULK <- "sshcluster:bulk"

md5_raw <- function(bytes) {
  f <- tempfile("proof-", tmpdir = tempdir(check = TRUE))
  on.exit(unlink(f))
  con <- file(f, "wb", raw = TRUE)
  writeBin(bytes, con)
  close(con)
  hex <- unname(tools::md5sum(f))
  at <- seq(1L, 31L, by = 2L)
  as.raw(strtoi(substring(hex, at, at + 1L), 16L))
}

hmac_md5 <- function(key, message) {
  if (length(key) > 64L) key <- md5_raw(key)
  key <- c(key, raw(64L - length(key)))
  inner <- md5_raw(c(xor(key, as.raw(0x36)), message))
  md5_raw(c(xor(key, as.raw(0x5c)), inner))
}

# The MAC that 'side' ("primary" or "worker") gives for a hello and the primary's nonce.
proof_mac <- function(key, side, hello, nonce) hmac_md5(key, c(charToRaw(side), hello, nonce))

# A hello: its first 32 bytes, then their MAC.
hello_of <- function(key, head) c(head, hmac_md5(key, c(charToRaw("hello"), head)))

# Equal in constant time (the MACs are compared with what a peer sent).
same_bytes <- function(a, b) length(a) == length(b) &&
  sum(bitwXor(as.integer(a), as.integer(b))) == 0L

# Fresh random bytes from the OS (R's own generator and .Random.seed untouched).
random_bytes <- function(n) {
  con <- file("/dev/urandom", "rb", raw = TRUE)
  on.exit(close(con))
  readBin(con, "raw", n)
}

# Besides the proof, both sides read a relay's frames (see worker.R): a whole message of
# 'len' bytes, read a few MB at a time (R reads one huge length from a socket ten times
# slower: 4.6 s against 0.3 s for 200 MB here).
read_raw <- function(con, len) {
  if (len <= 4194304) return(readBin(con, "raw", len))
  parts <- list()
  got <- 0
  while (got < len) {
    part <- readBin(con, "raw", min(4194304, len - got))
    if (!length(part)) break
    parts[[length(parts) + 1L]] <- part
    got <- got + length(part)
  }
  unlist(parts, use.names = FALSE)
}
