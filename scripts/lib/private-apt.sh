# Sourced by scripts/fetch-kernel.sh and scripts/fetch-qemu.sh: download
# packages from ONE Debian suite with a private apt configuration (its own
# sources list, lists and cache under a directory of ours). The machine's apt
# sources, lists and dpkg database are never read for sources nor written:
# adding trixie or bookworm-backports to them would change what the whole
# system upgrades to. Packages are unpacked with `dpkg -x`, never installed.

# The Debian mirror this machine's own sources name (deb822 "URIs:" or
# one-line "deb URL suite"), so a proxy or local mirror keeps working.
private_apt_mirror() {
  local m=${KTM_DEBIAN_MIRROR:-}
  if [ -z "$m" ]; then
    m=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null |
      grep -oE 'https?://[^ ]*/debian/?( |$)' | grep -v security | head -n 1 | tr -d ' ' || true)
    m=${m:-http://deb.debian.org/debian}
  fi
  echo "${m%/}"
}

# private_apt_download APTDIR SUITE OUTDIR PKG...: the .debs of PKG... from
# SUITE into OUTDIR; apt's state lives in APTDIR.
private_apt_download() {
  local apt=$1 suite=$2 out=$3
  shift 3
  local tool
  for tool in apt-get dpkg; do
    command -v "$tool" >/dev/null || { echo "private-apt: $tool is missing" >&2; return 1; }
  done
  mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial" "$apt/empty" "$out"
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $(private_apt_mirror) $suite main" \
    >"$apt/sources.list"
  # Every path apt would read or write that could involve the machine's own
  # configuration points into $apt or nowhere (no other sources, no pinning).
  local opts=(
    -o "Dir::Etc::SourceList=$apt/sources.list"
    -o "Dir::Etc::SourceParts=$apt/empty"
    -o "Dir::Etc::Preferences=$apt/empty/preferences"
    -o "Dir::Etc::PreferencesParts=$apt/empty"
    -o "Dir::State::Lists=$apt/lists"
    -o "Dir::Cache=$apt/cache"
    -o "APT::Get::List-Cleanup=0"
    # The cache usually sits in root's 0700 home, where apt's unprivileged
    # _apt downloader cannot write; say so rather than have apt warn.
    -o "APT::Sandbox::User=$(id -un)"
  )
  echo "private-apt: fetching $* from $(private_apt_mirror) $suite into $out" >&2
  apt-get -q "${opts[@]}" update >&2
  (cd "$out" && apt-get -q "${opts[@]}" download "$@" >&2)
}
