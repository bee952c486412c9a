# ---- sshcluster user data. The lines above set this cluster's data: lifetime (the
# ---- seconds left to the cluster's expiry when 'up' wrote this), r_packages, cran, repos, r_version, cran_keys,
# ---- keyserver. Runs as root at first boot.
umask 022
PATH=/usr/sbin:/usr/bin:/sbin:/bin; export PATH
state=/var/lib/sshcluster
log=/var/log/sshcluster-setup.log
mkdir -p "$state"
# The expiry on this instance's clock (which AWS keeps right), from the time left: the
# primary's clock may be off, and an absolute time from it would give the instance that
# much more life, or power it off at once (a primary hours behind).
expires=$(( $(date +%s) + lifetime ))

# 1. The dead man's switch, first, so that nothing below can keep the instance alive:
#    power off at the expiry (shutdown behaviour 'terminate' ends the instance and its
#    bill). A reboot forgets a scheduled shutdown, so it is a per-boot script as well, and
#    the time left is computed on the instance from the absolute expiry. It records in
#    $state/expiry that the shutdown is scheduled: 'up' fails an instance without that.
switch=/var/lib/cloud/scripts/per-boot/sshcluster-expiry.sh
mkdir -p "${switch%/*}"
cat > "$switch" <<SSHCLUSTER_EXPIRY
#!/bin/sh
# sshcluster dead man's switch: power off at the cluster's expiry, also after a reboot.
PATH=/usr/sbin:/usr/bin:/sbin:/bin; export PATH
expires=$expires
left=\$(( (expires - \$(date +%s) + 59) / 60 ))
rm -f $state/expiry
if [ "\$left" -lt 1 ]; then shutdown -h now
elif shutdown -h "+\$left" "sshcluster: max_lifetime reached"; then
  echo "armed \$expires" > $state/expiry.new && mv $state/expiry.new $state/expiry
fi
SSHCLUSTER_EXPIRY
chmod 755 "$switch"
"$switch"

# 2. The host keys, on the console, before anything slow: 'sshcluster ec2 up' reads them
#    from the console output (cloud-init prints them only after all user scripts ended).
keys() {
  echo "-----BEGIN SSH HOST KEY KEYS-----"
  cat /etc/ssh/ssh_host_*_key.pub 2>/dev/null
  echo "-----END SSH HOST KEY KEYS-----"
}
{ keys > /dev/console; } 2>/dev/null || keys

# 3. The setup, detached (a long package build must not hold up cloud-init or the keys),
#    logging to $log. Its outcome goes to $state/status, which 'up' reads over SSH:
#    running, then "ready <R version>" or "failed: <what>".
#@setup@
cat > "$state/run-setup" <<'SSHCLUSTER_RUN'
#!/bin/sh
# sshcluster setup: the spec's setup script, then R and the R packages (Debian's or
# Ubuntu's r-cran-* where they exist, else from the CRAN mirror), then a check that R
# starts and every package loads.
PATH=/usr/sbin:/usr/bin:/sbin:/bin; export PATH
umask 022
state=/var/lib/sshcluster
status() { printf '%s\n' "$*" > "$state/status.new" && mv "$state/status.new" "$state/status"; }
fail() { echo "sshcluster setup: failed: $*"; status "failed: $*"; exit 1; }
export DEBIAN_FRONTEND=noninteractive
# The image's own apt jobs (apt-daily, apt-daily-upgrade) run at first boot and hold
# apt's locks for minutes; cloud-init orders its own stages after them, but this setup
# runs detached, outside that order. DPkg::Lock::Timeout waits only for the dpkg lock,
# not for the lists lock 'update' takes nor the archives lock, which fail at once
# ("Could not get lock /var/lib/apt/lists/lock"). So: wait for those jobs, then retry
# with backoff while a lock is held (and 'update' on any failure: the network can come
# up late), for up to apt_patience seconds, naming the lock in the log.
apt_patience=600
apt_why=
apt_jobs() {
  systemctl is-active apt-daily.service apt-daily-upgrade.service 2>/dev/null \
    | grep -qxE 'active|activating|deactivating|reloading'
}
apt_get() {
  waited=0
  while [ "$waited" -lt "$apt_patience" ] && apt_jobs; do
    [ "$waited" -gt 0 ] || echo "sshcluster setup: waiting for the image's apt jobs" \
      "(apt-daily.service, apt-daily-upgrade.service) to end"
    sleep 5; waited=$((waited + 5))
  done
  delay=5; tried=0
  while :; do
    out=$(apt-get -q -y -o DPkg::Lock::Timeout=600 "$@" 2>&1); rc=$?
    printf '%s\n' "$out"
    [ "$rc" -eq 0 ] && return 0
    lock=$(printf '%s\n' "$out" | sed -n 's|.*Could not get lock \(/[^ ]*\).*|\1|p' | head -n 1)
    if [ -n "$lock" ]; then apt_why="${lock%.} is held by another apt process"
    elif [ "$1" = update ]; then apt_why="apt-get update exited with status $rc"
    else apt_why=; return "$rc"; fi
    if [ "$tried" -ge "$apt_patience" ]; then
      echo "sshcluster setup: gave up after $tried s: $apt_why"; return "$rc"
    fi
    echo "sshcluster setup: $apt_why; retrying in $delay s"
    sleep "$delay"; tried=$((tried + delay)); delay=$((delay * 2))
    [ "$delay" -le 60 ] || delay=60
  done
}
updated=
apt_update() { [ -n "$updated" ] || { apt_get update && updated=1; }; }
echo "sshcluster setup: started $(date -u +%Y-%m-%dT%H:%M:%SZ)"
if [ -f "$state/setup" ]; then
  if [ "$(head -c 2 "$state/setup")" = "#!" ]; then "$state/setup"; else sh -e "$state/setup"; fi \
    || fail "the setup script exited with status $?"
fi
# r_version=cran: CRAN's apt repository for this Debian or Ubuntu release, whose signing
# key is fetched by its fingerprint and refused unless that fingerprint matches.
if [ "$r_version" = cran ]; then
  id=$(. /etc/os-release 2>/dev/null && echo "${ID:-}")
  codename=$(. /etc/os-release 2>/dev/null && echo "${VERSION_CODENAME:-}")
  fpr=
  for kv in $cran_keys; do [ "${kv%%=*}" != "$id" ] || fpr=${kv#*=}; done
  [ -n "$fpr" ] && [ -n "$codename" ] \
    || fail "r_version: cran needs Debian or Ubuntu; this image is ${id:-unknown}"
  apt_update || fail "apt-get update${apt_why:+ ($apt_why)}"
  need=
  command -v gpg > /dev/null 2>&1 || need="$need gpg"
  command -v curl > /dev/null 2>&1 || need="$need curl"
  [ -z "$need" ] || apt_get install --no-install-recommends ca-certificates $need \
    || fail "installing$need (to add CRAN's apt repository)"
  gnupg=$(mktemp -d)
  curl -fsSL --retry 5 "$keyserver$fpr" > "$gnupg/key.asc" \
    || fail "fetching CRAN's signing key $fpr from ${keyserver%%/pks*}"
  GNUPGHOME=$gnupg gpg --batch --quiet --import "$gnupg/key.asc" 2>/dev/null
  GNUPGHOME=$gnupg gpg --batch --with-colons --fingerprint 2>/dev/null | grep -qx "fpr:*$fpr:" \
    || fail "the key fetched from ${keyserver%%/pks*} is not CRAN's signing key $fpr"
  mkdir -p /etc/apt/keyrings /etc/apt/sources.list.d \
    && GNUPGHOME=$gnupg gpg --batch --export "$fpr" > /etc/apt/keyrings/sshcluster-cran.gpg \
    && echo "deb [signed-by=/etc/apt/keyrings/sshcluster-cran.gpg]" \
      "$cran/bin/linux/$id $codename-cran40/" > /etc/apt/sources.list.d/sshcluster-cran.list \
    || fail "adding CRAN's apt repository"
  rm -rf "$gnupg"
  echo "sshcluster setup: R from $cran/bin/linux/$id $codename-cran40/"
  updated=
  apt_update || fail "apt-get update${apt_why:+ ($apt_why)}"
  apt_get install --no-install-recommends r-base-core r-recommended \
    || fail "installing R from CRAN (r-base-core r-recommended)"
fi
# r-recommended (Matrix, MASS, survival, ...) with R: without it a CRAN package that
# imports one fetches CRAN's current version, which needs a newer R than the image's.
if ! command -v Rscript > /dev/null 2>&1; then
  apt_update || fail "apt-get update${apt_why:+ ($apt_why)}"
  apt_get install --no-install-recommends r-base-core r-recommended \
    || fail "installing R (r-base-core r-recommended)"
fi
debs= ; from_cran=
for p in $r_packages; do
  Rscript -e "quit(status = !requireNamespace('$p', quietly = TRUE))" > /dev/null 2>&1 && continue
  deb=r-cran-$(printf '%s' "$p" | tr 'A-Z' 'a-z')
  apt_update || fail "apt-get update${apt_why:+ ($apt_why)}"
  if apt-cache show "$deb" > /dev/null 2>&1; then debs="$debs $deb"; else from_cran="$from_cran $p"; fi
done
if [ -n "$debs" ]; then
  apt_get install --no-install-recommends $debs || fail "installing$debs"
fi
if [ -n "$from_cran" ]; then
  apt_update || fail "apt-get update${apt_why:+ ($apt_why)}"
  apt_get install --no-install-recommends r-base-dev r-recommended \
    || fail "installing r-base-dev r-recommended (to build$from_cran)"
  # repos=binaries: Posit Package Manager's Linux binaries for this distribution (it
  # serves them to an R that names itself in the user agent), at a snapshot from before
  # CRAN's packages moved past this R (R 4.1: Ubuntu 22.04, 4.2: Debian 12, 4.3: Ubuntu
  # 24.04); a distribution it does not serve builds from the cran mirror.
  from=$repos
  if [ "$repos" = binaries ] || [ "$repos" = source ]; then from=$cran; fi
  if [ "$repos" = binaries ]; then
    codename=$(. /etc/os-release 2>/dev/null && echo "${VERSION_CODENAME:-}")
    case $(Rscript -e 'cat(R.version$major, sub("[.].*", "", R.version$minor), sep = ".")') in
      4.0|4.1) snapshot=2022-04-21;; 4.2) snapshot=2023-04-20;; 4.3) snapshot=2024-03-01;;
      *) snapshot=latest;;
    esac
    case $codename in
      focal|jammy|noble|bullseye|bookworm)
        from="https://packagemanager.posit.co/cran/__linux__/$codename/$snapshot";;
    esac
  fi
  echo "sshcluster setup: installing$from_cran from $from"
  SSHCLUSTER_PKGS="$from_cran" SSHCLUSTER_CRAN="$from" Rscript -e '
    options(HTTPUserAgent = sprintf("R/%s R (%s)", getRversion(), paste(getRversion(),
      R.version["platform"], R.version["arch"], R.version["os"])))
    pkgs <- strsplit(trimws(Sys.getenv("SSHCLUSTER_PKGS")), " +")[[1]]
    install.packages(pkgs, repos = Sys.getenv("SSHCLUSTER_CRAN"), Ncpus = parallel::detectCores())
    for (p in pkgs) if (!requireNamespace(p, quietly = TRUE)) quit(status = 1)' \
    || fail "installing$from_cran from $from"
fi
version=$(SSHCLUSTER_PKGS="$r_packages" Rscript -e '
  pkgs <- strsplit(trimws(Sys.getenv("SSHCLUSTER_PKGS")), " +")[[1]]
  for (p in pkgs) library(p, character.only = TRUE)
  cat(R.version.string)') || fail "R does not start, or an R package does not load:$r_packages"
echo "sshcluster setup: ready: $version"
status "ready $version"
SSHCLUSTER_RUN
chmod 755 "$state/run-setup"
echo running > "$state/status"
touch "$log"
chmod 644 "$log" "$state/status"
[ ! -f "$state/expiry" ] || chmod 644 "$state/expiry"
r_packages="$r_packages" cran="$cran" repos="$repos" r_version="$r_version" \
  cran_keys="$cran_keys" keyserver="$keyserver" nohup setsid "$state/run-setup" >> "$log" 2>&1 < /dev/null &
