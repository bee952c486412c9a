# sshcluster push, on a host inside a chain: tee -p, without copying the bytes.
#   perl -e "$FORWARD_PL" SPLICE TEE FILE 4>FILE
# Stdin (the session's, a pipe) goes on to stdout (the next host's ssh, a pipe) and to
# descriptor 4 (FILE, a fifo that this host's tar reads; the shell opens it, so that
# tar sees its end however perl ends). SPLICE and TEE are the numbers of Linux's
# splice(2) and tee(2) on this CPU: tee() hands the pages of stdin to stdout without
# reading them, splice() moves the same bytes on into FILE, so this process copies
# nothing (coreutils' tee reads and writes every byte twice, 8 KiB at a time: about a
# CPU-second per GiB here, on every host of the chain but the last). As tee -p: an
# output that has gone (a next host lost, a tar that gave up on a full disk) is
# dropped, the other one still gets everything; both gone, it stops. Where stdin or
# stdout is not a pipe, or perl is not a 64-bit Linux one, it is coreutils' tee -p;
# where the kernel refuses tee() or splice() (a seccomp filter), it reads and writes
# 1 MiB at a time from there on. Only perl's built-in functions: no module.
my ($splice, $tee, $path) = @ARGV;
$SIG{PIPE} = "IGNORE";                              # a gone output: EPIPE, not death
my ($EINTR, $EAGAIN, $EPIPE) = (4, 11, 32);          # Linux: the same on x86_64 and arm64
my $splices = -p STDIN && -p STDOUT && $^O eq "linux" && length(pack("p", undef)) == 8;
# (before perl opens descriptor 4, which it would close on exec: tee inherits it)
exec "tee", "-p", $path unless $splices;
open(my $file, ">&=", 4) or exit 1;
for my $h (\*STDIN, \*STDOUT, $file) {
  fcntl($h, 1031, 1 << 20);                         # F_SETPIPE_SZ: 1 MiB, if allowed
  my $fl = fcntl($h, 3, 0);                         # F_GETFL
  fcntl($h, 4, $fl & ~04000) if defined $fl;        # F_SETFL: not O_NONBLOCK
}
my ($out, $local, $buf) = (1, 1);
sub again {                                         # a wait, then true; or false
  my $e = $! + 0;
  return 0 unless $e == $EAGAIN || $e == $EINTR;
  select(undef, undef, undef, 0.001);
  1;
}
sub put {                                           # all of $_[1] to output $_[0]
  my ($which, $data) = @_;
  my ($alive, $h) = $which ? (\$local, $file) : (\$out, \*STDOUT);
  my $off = 0;
  while ($$alive && $off < length $data) {
    my $w = syswrite($h, $data, length($data) - $off, $off);
    if (defined $w) { $off += $w } elsif (!again()) { $$alive = 0 }
  }
  close STDOUT if !$out;
}
sub copy_all {                                      # without splice() and tee()
  while ($out || $local) {
    my $n = sysread(STDIN, $buf, 1 << 20);
    next if !defined $n && again();
    last if !$n;
    put(0, $buf);
    put(1, $buf);
  }
  exit 0;
}
copy_all() unless $splices;                         # (tee could not be run)
while ($out || $local) {
  if (!$out) {                                      # FILE alone: move what comes
    my $m = syscall($splice, 0, 0, fileno($file), 0, 1 << 20, 0);
    next if $m < 0 && again();
    copy_all() if $m < 0 && $! + 0 != $EPIPE;       # splice() refused
    last if $m <= 0;                                # the end, or FILE gone too
    next;
  }
  my $n = syscall($tee, 0, 1, 1 << 20, 0);          # the next host gets a reference
  if ($n < 0) {
    next if again();
    copy_all() if $! + 0 != $EPIPE;                 # tee() refused: nothing went on
    $out = 0;                                       # the next host has gone
    close STDOUT;
    next;
  }
  last if $n == 0;                                  # the end of the stream
  while ($n > 0) {                                  # ... and FILE the bytes themselves
    my $m = $local ? syscall($splice, 0, 0, fileno($file), 0, $n, 0) : -1;
    next if $m < 0 && $local && again();
    if ($m < 0) {                                   # (they went on: take them off stdin)
      my $refused = $local && $! + 0 != $EPIPE;
      $local = 0 unless $refused;
      $m = sysread(STDIN, $buf, $n);
      exit 1 if !$m;                                # cannot be: they are in the pipe
      put(1, $buf) if $refused;                     # splice() refused: written instead
      $n -= $m;
      copy_all() if $refused && $n == 0;
      next;
    }
    $n -= $m;
  }
}
exit 0;
