# sshcluster's relay for big messages on a host whose workers have lanes (R/worker.R
# starts it from the host's R, which forked the workers, and pastes this file in):
#   perl -e "$RELAY_PL" SPLICE PRIMARY DIR... -- SLOT:FD:PID...
# PRIMARY is the descriptor of the host's connection to the primary, each FD that of
# a worker's end of its pair with the relay (both inherited from the host's R); stdin
# is a pipe from that R, whose end (the R gone) ends this relay too. SPLICE is the
# number of Linux's splice(2) on this CPU (0: unknown).
#
# From the primary come frames (node.R's relay_head): a head of 12 bytes, a slot
# (int32, big-endian) and a length (a double, big-endian), then that many bytes for
# that worker; a negative slot: the last message again, for that worker; slot 0 asks
# for an echo (a head of slot 0 and length 0 back). Each message is kept in a file
# without a name: opened with O_TMPFILE in the first DIR that takes it (a tmpfs,
# /dev/shm, first), where that fails (a full or small /dev/shm) the bytes so far are
# copied to the next. A worker gets a notice: a kind (int32: 1 the message is in a
# file, 2 it could not be kept), the length of what follows (int32), the message's
# length (a double), then the file's path (/proc/PID/fd/N, which only this user can
# open) or why it could not be kept. The worker opens the file, reads it where it
# is (R's unserialize() reads a file in big blocks: a socket costs it a system call
# per 4 KiB), and sends one byte back: the relay may then let the file go (when the
# last worker told of it has opened it and a newer message came). Nothing is left
# on the host whichever way this ends: the files have no name. A worker whose end
# is gone (or that cannot be written to) is dropped; the relay ends when the
# primary's connection or its stdin ends, or no worker is left. Only perl's
# built-in functions: no module.
my ($splice, $pfd, @rest) = @ARGV;
my @dirs;
push @dirs, shift @rest while @rest && $rest[0] ne "--";
my (undef, @workers) = @rest;
$SIG{PIPE} = "IGNORE";
my ($EINTR, $EAGAIN) = (4, 11);
my $O_CREAT_EXCL_RDWR = 0100 | 0200 | 2;
# O_TMPFILE: __O_TMPFILE with O_DIRECTORY, whose number differs between CPUs (x86,
# arm64); the wrong one fails with EINVAL.
my @O_TMPFILE = (020000000 | 0200000, 020000000 | 040000);
sub blocking {                                      # (R's sockets are non-blocking)
  my $fl = fcntl($_[0], 3, 0);                      # F_GETFL
  fcntl($_[0], 4, $fl & ~04000) if defined $fl;     # F_SETFL: not O_NONBLOCK
}
open(my $P, "+<&=", $pfd) or exit 2;
blocking($P);
my (%end, %pid, %queue, %file);
for (@workers) {
  my ($slot, $fd, $pid) = split /:/;
  open(my $h, "+<&=", $fd) or next;
  blocking($h);
  ($end{$slot}, $pid{$slot}, $queue{$slot}) = ($h, $pid, []);
}
my ($last, $next) = (undef, 0);
# splice(2) (SPLICE, its number on this CPU; 0: none) through a pipe of 1 MiB if allowed
$splice = 0 if $^O ne "linux" || length(pack("p", undef)) != 8;
my ($pr, $pw);
$splice = 0 if $splice && !pipe($pr, $pw);
fcntl($pw, 1031, 1 << 20) if $splice;               # F_SETPIPE_SZ

sub again { my $e = $! + 0; $e == $EINTR || $e == $EAGAIN }
sub read_all {                                      # exactly $_[1] bytes of $_[0]
  my ($h, $n) = @_;
  my $buf = "";
  while (length($buf) < $n) {
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
sub unnamed {                                       # a file without a name in $_[0]
  my ($dir) = @_;
  my $fh;
  for my $flags (@O_TMPFILE) { return $fh if sysopen($fh, $dir, 2 | $flags, 0600) }
  # (a file system without O_TMPFILE: named, and its name removed at once)
  for (1 .. 10) {
    my $p = "$dir/.sshcluster-relay-$$-" . int(rand(1e9));
    if (sysopen($fh, $p, $O_CREAT_EXCL_RDWR, 0600)) { unlink $p; return $fh }
  }
  undef;
}
sub move {                                          # the first $_[1] bytes of $_[0] to a
  my ($old, $n, $new) = @_;                         # new file: true if all went
  sysseek($old, 0, 0) or return 0;
  my ($at, $buf) = (0);
  while ($at < $n) {
    my $r = sysread($old, $buf, 1 << 20);
    next if !defined $r && again();
    return 0 if !$r;
    $r = $n - $at if $r > $n - $at;
    write_all($new, substr($buf, 0, $r)) or return 0;
    $at += $r;
  }
  1;
}
# The message being kept: its file, the directories not yet tried, why none took it,
# and its bytes so far.
my ($kept, @left, $why, $at);
sub keep {                                          # $_[0] on at the end of the file: in
  while ($kept && !write_all($kept, $_[0])) {       # the next directory where it is full
    my ($err, $new) = ("$!");
    while (!$new && @left) {
      $new = unnamed(shift @left);
      $new = undef if $new && !move($kept, $at, $new);
    }
    $kept = $new;
    $why = "no room for the message in " . join(" or ", @dirs) . " ($err)" if !$kept;
  }
  $at += length $_[0];
}
# Reads a message of $len bytes from the primary into a new file: its id, or undef
# when the primary's connection ended. A message no directory could take is read to
# its end all the same, and kept as the reason (kind 2). With splice(), the bytes go
# from the socket into a pipe and on into the file without passing through perl (a
# copy less, and none of perl's); where the kernel refuses, perl reads and writes.
sub store {
  my ($len) = @_;
  ($kept, $why, $at, @left) = (undef, "", 0, @dirs);
  while (!$kept && @left) { my $d = shift @left; $kept = unnamed($d); $why = "$d: $!" if !$kept }
  $why = "no directory would take it ($why)" if !$kept;
  while ($at < $len) {
    my $want = $len - $at < (1 << 20) ? $len - $at : 1 << 20;
    my $chunk;
    if ($splice) {
      my $n = syscall($splice, fileno($P), 0, fileno($pw), 0, $want, 0);
      next if $n < 0 && again();
      if ($n < 0) { $splice = 0; next }             # (refused: read and written)
      return undef if $n == 0;
      while ($n > 0) {
        my $m = $kept ? syscall($splice, fileno($pr), 0, fileno($kept), 0, $n, 0) : -1;
        next if $m < 0 && $kept && again();
        if ($m > 0) { $n -= $m; $at += $m; next }
        my $r = sysread($pr, $chunk, $n);           # (the file refused: full, or no splice)
        return undef if !$r;
        $n -= $r;
        keep($chunk);
      }
      next;
    }
    my $r = sysread($P, $chunk, $want);
    next if !defined $r && again();
    return undef if !$r;
    keep($chunk);
  }
  my $id = $next++;
  $file{$id} = { fh => $kept, len => $len, refs => 0, why => $why };
  $id;
}
sub let_go {                                        # a file no one will open again
  my ($id) = @_;
  my $f = $file{$id};
  delete $file{$id} if $f && $f->{refs} <= 0 && (!defined $last || $id != $last);
}
sub drop {                                          # a worker gone: kill it (a write to it
  my ($slot, $kill) = @_;                           # failed) and forget its files
  kill "KILL", $pid{$slot} if $kill;
  close $end{$slot};
  delete $end{$slot};
  for my $id (@{ $queue{$slot} }) { $file{$id}{refs}-- if $file{$id}; let_go($id) }
  $queue{$slot} = [];
}
sub notice {
  my ($slot, $id) = @_;
  return if !$end{$slot} || !defined $id || !$file{$id};
  my $f = $file{$id};
  my ($kind, $what) = $f->{fh} ? (1, "/proc/$$/fd/" . fileno($f->{fh})) : (2, $f->{why});
  $f->{refs}++;
  push @{ $queue{$slot} }, $id;
  drop($slot, 1) if !write_all($end{$slot}, pack("l> l> d>", $kind, length $what, $f->{len}) . $what);
}

while (%end) {
  my $rin = "";
  vec($rin, fileno($P), 1) = 1;
  vec($rin, 0, 1) = 1;
  vec($rin, fileno($end{$_}), 1) = 1 for keys %end;
  my $n = select(my $rout = $rin, undef, undef, undef);
  next if $n < 0 && again();
  last if $n < 0;
  if (vec($rout, 0, 1)) {                           # the host's R has ended
    my $r = sysread(STDIN, my $b, 64);
    last if defined $r ? !$r : !again();
  }
  for my $slot (keys %end) {                        # a worker opened its file, or ended
    next if !vec($rout, fileno($end{$slot}), 1);
    my $r = sysread($end{$slot}, my $acks, 4096);
    next if !defined $r && again();
    if (!$r) { drop($slot, 0); next }
    for (1 .. $r) {
      my $id = shift @{ $queue{$slot} };
      next if !defined $id;
      $file{$id}{refs}-- if $file{$id};
      let_go($id);
    }
  }
  next if !vec($rout, fileno($P), 1);
  my $h = read_all($P, 12);
  last if !defined $h;
  my ($slot, $len) = unpack("l> d>", $h);
  if ($slot == 0) { last if !write_all($P, pack("l> d>", 0, 0)); next }
  if ($slot > 0) {
    last if $len < 0 || $len > 2**52 || $len != int($len);
    my $id = store($len);
    last if !defined $id;
    my $old = $last;
    $last = $id;
    let_go($old) if defined $old;
  }
  notice(abs($slot), $last);
}
exit 0;
