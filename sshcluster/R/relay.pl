# sshcluster's relay for big messages on a host whose workers have lanes (R/worker.R
# starts it from the host's R, which forked the workers, and pastes this file in):
#   perl -e "$RELAY_PL" ARCH PRIMARY DIR... -- SLOT:FD...
# PRIMARY is the descriptor of the host's connection to the primary, each FD that of
# a worker's end of its pair with the relay (both inherited from the host's R, its
# parent: the relay ends within a second of that R, and stays in its process group).
# ARCH is R's name for this CPU (x86_64, aarch64): the numbers of Linux's system calls
# used here. Once it holds every descriptor it writes "F" to each worker (the first
# byte a worker reads from its relay: this relay's kind) and "ready PID" on stdout (a
# pipe the host's R reads: without it, that R relays itself).
#
# From the primary come frames (node.R's relay_head): a head of 12 bytes, a slot
# (int32, big-endian) and a length (a double, big-endian), then that many bytes for
# that worker; a negative slot: the last message again, for that worker; slot 0 asks
# for an echo (a head of slot 0 and length 0 back). Each message is kept once, in a
# file without a name (O_TMPFILE) in the first DIR (/dev/shm first) where it takes at
# most half of the room left, its whole length reserved at once (fallocate): a shared
# tmpfs is never filled up (where the room cannot be known, no file). A worker gets a
# notice: a kind (int32), the length of what follows (int32), the message's length (a
# double), then, kind 1, the file's path (/proc/PID/fd/N, which only this user can
# open). The worker opens the file, reads it where it is (R's unserialize() reads a
# file in big blocks: a socket costs it a system call per 4 KiB), and sends one byte
# back, ACK (6); or NAK (21) where it cannot open it, and the relay then sends it the
# message on its socket. The relay lets a file go once the last worker told of it has
# said so and a newer message came. A message
# no DIR has room for is kept in this process's memory and follows its notice on the
# worker's socket (kind 3), as the R relay hands messages on. Nothing is left on the
# host whichever way this ends: the files have no name (a file system without
# O_TMPFILE: its name is removed right after it is made). A worker whose end is gone is
# dropped (its host's R reports it); the relay ends when the primary's connection or
# its parent ends, or no worker is left. Only perl's built-in functions: no module.
# (SSHCLUSTER_RELAY_SPLICE=0 in its environment: no splice(), for the tests.)
my ($arch, $pfd, @rest) = @ARGV;
my @dirs;
push @dirs, shift @rest while @rest && $rest[0] ne "--";
my (undef, @workers) = @rest;
$SIG{PIPE} = "IGNORE";
my ($EINTR, $EAGAIN) = (4, 11);                     # Linux: the same on x86_64 and arm64
# splice, statfs, fallocate; O_DIRECTORY (part of O_TMPFILE)
my %calls = (x86_64 => [275, 137, 285, 0200000], aarch64 => [76, 43, 47, 040000]);
my ($splice, $statfs, $fallocate, $dir_flag) = @{ $calls{$arch} || [0, 0, 0, 0] };
($splice, $statfs, $fallocate) = (0, 0, 0) if $^O ne "linux" || length(pack("p", undef)) != 8;
$splice = 0 if ($ENV{SSHCLUSTER_RELAY_SPLICE} // "") eq "0";
my $me = readlink("/proc/self") || $$;              # (this pid as /proc shows it)
my $parent = getppid();
# (R may start it in a process group of its own: its host's session ends that of R)
eval { setpgrp(0, getpgrp($parent)) };
sub blocking {                                      # (R's sockets are non-blocking)
  my $fl = fcntl($_[0], 3, 0);                      # F_GETFL
  fcntl($_[0], 4, $fl & ~04000) if defined $fl;     # F_SETFL: not O_NONBLOCK
}
open(my $P, "+<&=", $pfd) or exit 2;
blocking($P);
my (%end, %queue, %file);
for (@workers) {
  my ($slot, $fd) = split /:/;
  open(my $h, "+<&=", $fd) or exit 2;               # (its host is then given up)
  blocking($h);
  ($end{$slot}, $queue{$slot}) = ($h, []);
}
my ($last, $next) = (undef, 0);
my ($pr, $pw);                                      # splice()'s pipe, 1 MiB if allowed
$splice = 0 if $splice && !pipe($pr, $pw);
fcntl($pw, 1031, 1 << 20) if $splice;               # F_SETPIPE_SZ

sub again { my $e = $! + 0; $e == $EINTR || $e == $EAGAIN }
sub orphan { getppid() != $parent }                 # the host's R has ended
sub wait_in {                                       # until $_[0] can be read; the R gone: exit
  my $rin = "";
  vec($rin, fileno($_[0]), 1) = 1;
  while (1) {
    my $n = select(my $rout = $rin, undef, undef, 1);
    return if $n > 0 || ($n < 0 && !again());
    exit 0 if orphan();
  }
}
sub read_all {                                      # exactly $_[1] bytes of $_[0]
  my ($h, $n) = @_;
  my $buf = "";
  while (length($buf) < $n) {
    wait_in($h);
    my $r = sysread($h, $buf, $n - length($buf), length($buf));
    next if !defined $r && again();
    return undef if !$r;
  }
  $buf;
}
sub write_all {                                     # all of $_[1] to $_[0] (not copied)
  my ($h, $off) = ($_[0], 0);
  while ($off < length $_[1]) {
    my $w = syswrite($h, $_[1], length($_[1]) - $off, $off);
    if (defined $w) { $off += $w } elsif (!again()) { return 0 }
  }
  1;
}
sub room {                                          # bytes free in a directory, or undef
  return undef if !$statfs;
  my $buf = "\0" x 256;
  return undef if syscall($statfs, $_[0], $buf) != 0;
  my (undef, $bsize, undef, undef, $avail, undef, undef, undef, undef, $frsize) =
    unpack("q7 a8 q2", $buf);
  ($frsize || $bsize) * $avail;
}
# A file without a name for $len bytes in the first directory with room for it.
sub unnamed {
  my ($len) = @_;
  for my $dir (@dirs) {
    my $free = room($dir);
    next if !defined $free || $len > $free / 2;     # (a shared tmpfs is not filled up)
    my $fh;
    if (!($dir_flag && sysopen($fh, $dir, 2 | 020000000 | $dir_flag, 0600))) {
      # (a file system without O_TMPFILE: named, and its name removed at once)
      my $p = "$dir/.sshcluster-relay-$me-" . int(rand(1e9));
      next if !sysopen($fh, $p, 0100 | 0200 | 2, 0600);   # O_CREAT|O_EXCL|O_RDWR
      unlink $p;
    }
    return $fh if !$fallocate || $len == 0 || syscall($fallocate, fileno($fh), 0, 0, $len) == 0;
    my $e = $! + 0;
    return $fh if $e == 95 || $e == 38;            # EOPNOTSUPP, ENOSYS: written as it is
    close $fh;                                      # (ENOSPC, EDQUOT, EFBIG: the next one)
  }
  undef;
}
# Reads a message of $len bytes from the primary: into a new file, or into memory where
# no directory has room for it (or a write to its file fails: what was written is read
# back). Its id, or undef when the primary's connection ended. With splice(), the bytes
# go from the socket into a pipe and on into the file without passing through perl (a
# copy less, and none of perl's); where the kernel refuses, perl reads and writes.
sub store {
  my ($len) = @_;
  my $fh = unnamed($len);
  my ($at, $mem, $chunk) = (0, $fh ? undef : "");
  my $keep = sub {                                  # $_[0] on after the first $at bytes
    if ($fh && !write_all($fh, $_[0])) {            # (a write that failed: into memory)
      $mem = "";
      $fh = undef if !sysseek($fh, 0, 0) || !defined($mem = read_all($fh, $at));
      die "sshcluster: relay.pl could not read back its file\n" if !$fh;
      close $fh;
      $fh = undef;
    }
    $mem .= $_[0] if !$fh;
    $at += length $_[0];
  };
  while ($at < $len) {
    my $want = $len - $at < (1 << 20) ? $len - $at : 1 << 20;
    wait_in($P);
    if ($splice && $fh) {
      my $n = syscall($splice, fileno($P), 0, fileno($pw), 0, $want, 0);
      next if $n < 0 && again();
      if ($n < 0) { $splice = 0; next }             # (refused: read and written)
      return undef if $n == 0;
      while ($n > 0) {
        my $m = $fh ? syscall($splice, fileno($pr), 0, fileno($fh), 0, $n, 0) : -1;
        next if $m < 0 && $fh && again();
        if ($m > 0) { $n -= $m; $at += $m; next }
        my $r = sysread($pr, $chunk, $n);           # (the file refused: read, written)
        next if !defined $r && again();
        return undef if !$r;
        $n -= $r;
        $keep->($chunk);
      }
      next;
    }
    my $r = sysread($P, $chunk, $want);
    next if !defined $r && again();
    return undef if !$r;
    $keep->($chunk);
  }
  my $id = $next++;
  $file{$id} = { fh => $fh, mem => $mem, len => $len, refs => 0 };
  $id;
}
sub let_go {                                        # a file no one will open again
  my ($id) = @_;
  my $f = $file{$id};
  delete $file{$id} if $f && $f->{refs} <= 0 && (!defined $last || $id != $last);
}
sub drop {                                          # a worker gone: forget its files
  my ($slot) = @_;
  close $end{$slot};
  delete $end{$slot};
  for my $id (@{ $queue{$slot} }) { $file{$id}{refs}-- if $file{$id}; let_go($id) }
  $queue{$slot} = [];
}
sub notice {
  my ($slot, $id) = @_;
  my $f = defined $id ? $file{$id} : undef;
  return if !$end{$slot};
  exit 2 if !$f;                                    # (a head again with no message: cannot be)
  if (!$f->{fh}) {                                  # in memory: the message follows
    drop($slot) if !write_all($end{$slot}, pack("l> l> d>", 3, 0, $f->{len})) ||
      !write_all($end{$slot}, $f->{mem});
    return;
  }
  my $path = "/proc/$me/fd/" . fileno($f->{fh});
  $f->{refs}++;
  push @{ $queue{$slot} }, $id;
  drop($slot) if !write_all($end{$slot}, pack("l> l> d>", 1, length $path, $f->{len}) . $path);
}

sub send_file {                                     # a kept file's bytes to a worker
  my ($slot, $f) = @_;
  sysseek($f->{fh}, 0, 0) or return 0;
  my ($at, $buf) = (0);
  while ($at < $f->{len}) {
    my $r = sysread($f->{fh}, $buf, 1 << 20);
    next if !defined $r && again();
    return 0 if !$r;
    write_all($end{$slot}, $buf) or return 0;
    $at += $r;
  }
  1;
}

for my $slot (keys %end) { drop($slot) if !write_all($end{$slot}, "F") }
$| = 1;
print "ready $$\n";
open(STDOUT, ">", "/dev/null");                     # (the pipe closed; fd 1 kept)
while (%end) {
  my $rin = "";
  vec($rin, fileno($P), 1) = 1;
  vec($rin, fileno($end{$_}), 1) = 1 for keys %end;
  my $n = select(my $rout = $rin, undef, undef, 1);
  next if $n < 0 && again();
  last if $n < 0 || orphan();
  next if $n == 0;
  for my $slot (keys %end) {                        # a worker opened its file, or ended
    next if !vec($rout, fileno($end{$slot}), 1);
    my $r = sysread($end{$slot}, my $acks, 4096);
    next if !defined $r && again();
    if (!$r) { drop($slot); next }
    for my $said (split //, $acks) {
      my $id = shift @{ $queue{$slot} };
      next if !defined $id;
      # (NAK: the worker could not open the file: its bytes, on its socket)
      drop($slot) if $said eq "\x15" && $file{$id} && !send_file($slot, $file{$id});
      $file{$id}{refs}-- if $file{$id};
      let_go($id);
      last if !$end{$slot};
    }
  }
  next if !vec($rout, fileno($P), 1);
  my $h = read_all($P, 12);
  last if !defined $h;
  my ($slot, $len) = unpack("l> d>", $h);
  if ($slot == 0) { last if !write_all($P, pack("l> d>", 0, 0)); next }
  if ($slot > 0) {
    last if $len < 0 || $len > 2**52 || $len != int($len);
    my $old = $last;                                # (let go first: the room is the new one's)
    $last = undef;
    let_go($old) if defined $old;
    $last = store($len);
    last if !defined $last;
  }
  notice(abs($slot), $last);
}
exit 0;
