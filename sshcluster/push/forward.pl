# sshcluster push, on a host inside a chain: tee -p FILE, without copying the bytes.
#   perl -e "$FORWARD_PL" SPLICE TEE FILE
# Stdin (the session's, a pipe) goes on to stdout (the next host's ssh, a pipe) and to
# FILE (a fifo that this host's tar reads). SPLICE and TEE are the numbers of Linux's
# splice(2) and tee(2) on this CPU: tee() hands the pages of stdin to stdout without
# reading them, splice() moves the same bytes on into FILE, so this process copies
# nothing (coreutils' tee reads and writes every byte twice, 8 KiB at a time: about a
# CPU-second per GiB here, on every host of the chain). As tee -p: an output that has
# gone (a next host lost, a tar that gave up on a full disk) is dropped, the other one
# still gets everything; both gone, it stops. Where stdin or stdout is not a pipe it is
# coreutils' tee -p; where tee() is refused before the first byte (a kernel or a
# seccomp filter without it), it reads and writes, 1 MiB at a time.
# (No single quote in this file: the script holds it in one.)
use strict;
my ($splice, $tee, $path) = @ARGV;
$SIG{PIPE} = "IGNORE";                             # a gone output: EPIPE, not death
exec "tee", "-p", $path unless -p STDIN && -p STDOUT;
open(my $file, ">", $path) or exit 1;
my $fd = fileno($file);
for my $h (\*STDIN, \*STDOUT, $file) {
  fcntl($h, 1031, 1 << 20);                         # F_SETPIPE_SZ: 1 MiB, if allowed
  my $fl = fcntl($h, 3, 0);                         # F_GETFL
  fcntl($h, 4, $fl & ~04000) if defined $fl;        # F_SETFL: not O_NONBLOCK
}
my ($out, $local, $moved, $buf) = (1, 1, 0);
sub again { $!{EAGAIN} || $!{EINTR} ? select(undef, undef, undef, 0.001) + 1 : 0 }
sub copy_all {                                      # without splice() and tee()
  while (1) {
    my $n = sysread(STDIN, $buf, 1 << 20);
    next if !defined $n && again();
    last if !$n;
    for my $o ([\$out, \*STDOUT], [\$local, $file]) {
      my $off = 0;
      while (${$o->[0]} && $off < $n) {
        my $w = syswrite($o->[1], $buf, $n - $off, $off);
        if (defined $w) { $off += $w } elsif (!again()) { ${$o->[0]} = 0 }
      }
    }
    last unless $out || $local;
  }
  exit 0;
}
while ($out || $local) {
  if (!$out) {                                      # FILE alone: move what comes
    my $m = syscall($splice, 0, 0, $fd, 0, 1 << 20, 0);
    next if $m < 0 && again();
    last if $m <= 0;
    next;
  }
  my $n = syscall($tee, 0, 1, 1 << 20, 0);          # the next host gets a reference
  if ($n < 0) {
    next if again();
    copy_all() if !$moved && ($!{EINVAL} || $!{ENOSYS});
    $out = 0;                                       # the next host has gone
    next;
  }
  last if $n == 0;                                  # the end of the stream
  $moved = 1;
  while ($n > 0) {                                  # ... and FILE the bytes themselves
    my $m = $local ? syscall($splice, 0, 0, $fd, 0, $n, 0) : -1;
    next if $m < 0 && $local && again();
    if ($m < 0) { $local = 0; $m = sysread(STDIN, $buf, $n) }
    exit 1 if !$m;                                  # cannot be: they are in the pipe
    $n -= $m;
  }
}
exit 0;
