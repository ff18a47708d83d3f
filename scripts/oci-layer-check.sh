#!/usr/bin/env bash
# Check that `unionmount export` writes a layer podman applies like any image layer: make a
# base rootfs, change it through a union mount (copy-up, delete, rm -rf + mkdir, hard link),
# export the upper as an OCI layer, put base + layer into an OCI image layout, `podman pull`
# it into scratch storage and look inside with `podman run`. Then the same again one layer up:
# the upper moved down under a fresh upper, a directory it had moved moved again, exported
# as a third layer, to show moves recorded in a lower layer survive into the image.
# Needs root, podman (apt-get install podman runc) and busybox-static. Prints one line per
# check and "N passed, N failed".
set -euo pipefail

BIN=${UNIONMOUNT:-$(cd "$(dirname "$0")/.." && pwd)/target/release/unionmount}
[ -x "$BIN" ] || (cd "$(dirname "$0")/.." && cargo build --release -q)
for t in podman busybox; do
    command -v $t >/dev/null || { echo "needs $t (apt-get install podman runc busybox-static)" >&2; exit 2; }
done

T=/tmp/oci-layer-check-$$  # lowercase: podman names the image after it
rm -rf "$T" && mkdir -p "$T"
PODMAN=(podman --root "$T/storage" --runroot "$T/run" --storage-driver vfs)
cleanup() {
    fusermount3 -u "$T/merged" 2>/dev/null || true
    "${PODMAN[@]}" rmi -af >/dev/null 2>&1 || true
    rm -rf "$T"
}
trap cleanup EXIT

# 1. A base rootfs.
mkdir -p "$T"/{base,upper,upper2,merged,layout/blobs/sha256}
(cd "$T/base" && mkdir -p bin etc opt d keep && cp "$(command -v busybox)" bin/busybox \
    && ln -s busybox bin/sh && echo "one" > etc/a && echo "hello" > opt/hello.txt \
    && echo "old" > d/x && echo "old" > d/z && echo "k" > keep/k \
    && mkdir -p mv/sub && echo "m" > mv/sub/f && echo "t" > mv/t)

# 2. Change it through the mount, as a container would.
"$BIN" "$T/upper=RW:$T/base=RO" "$T/merged"
echo "two" >> "$T/merged/etc/a"
rm "$T/merged/opt/hello.txt"
rm -rf "$T/merged/d" && mkdir "$T/merged/d" && echo "new" > "$T/merged/d/y"
ln "$T/merged/etc/a" "$T/merged/etc/a-link"
chmod 600 "$T/merged/keep/k"
mv "$T/merged/mv" "$T/merged/mv2"
fusermount3 -u "$T/merged"

# 3. The layer, and the base as a layer of its own.
"$BIN" export "$T/upper" --lower "$T/base" --tar "$T/layer.tar" >/dev/null
tar -C "$T/base" -cf "$T/base.tar" .

# 3b. That upper stacked as a lower under a fresh one: move its moved directory again.
"$BIN" "$T/upper2=RW:$T/upper=RO:$T/base=RO" "$T/merged"
mv "$T/merged/mv2" "$T/merged/mv3"
echo "n" > "$T/merged/mv3/new"
fusermount3 -u "$T/merged"
"$BIN" export "$T/upper2" --lower "$T/upper" --lower "$T/base" --tar "$T/layer2.tar" >/dev/null

# 4. An OCI image layout holding base + layer.
blob() { # file -> "digest size", stored under blobs/
    local d; d=$(sha256sum "$1" | cut -d' ' -f1)
    cp "$1" "$T/layout/blobs/sha256/$d"
    echo "$d $(stat -c %s "$1")"
}
read -r BD BS <<<"$(blob "$T/base.tar")"
read -r LD LS <<<"$(blob "$T/layer.tar")"
read -r L2D L2S <<<"$(blob "$T/layer2.tar")"
cat >"$T/config.json" <<EOF
{"architecture":"amd64","os":"linux","config":{"Cmd":["/bin/sh"]},
 "rootfs":{"type":"layers","diff_ids":["sha256:$BD","sha256:$LD","sha256:$L2D"]}}
EOF
read -r CD CS <<<"$(blob "$T/config.json")"
cat >"$T/manifest.json" <<EOF
{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",
 "config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:$CD","size":$CS},
 "layers":[
  {"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:$BD","size":$BS},
  {"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:$LD","size":$LS},
  {"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:$L2D","size":$L2S}]}
EOF
read -r MD MS <<<"$(blob "$T/manifest.json")"
echo '{"imageLayoutVersion":"1.0.0"}' >"$T/layout/oci-layout"
cat >"$T/layout/index.json" <<EOF
{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json",
 "digest":"sha256:$MD","size":$MS,"annotations":{"org.opencontainers.image.ref.name":"check"}}]}
EOF

# 5. Pull it and look.
"${PODMAN[@]}" pull -q "oci:$T/layout:check" >/dev/null
IMG=$("${PODMAN[@]}" images -q | head -1)
# Explicit limits: podman's defaults need CAP_SYS_RESOURCE, which sandboxes may lack.
run() { "${PODMAN[@]}" run --rm --network none --ulimit nofile=1024:1024 --ulimit nproc=4096:4096 "$IMG" /bin/busybox sh -c "$1"; }

pass=0 fail=0
check() { # name expected command
    local got; got=$(run "$3" 2>&1 || true)
    if [ "$got" = "$2" ]; then echo "PASS $1"; pass=$((pass + 1));
    else echo "FAIL $1: expected [$2], got [$got]"; fail=$((fail + 1)); fi
}
check "copied-up file carries the change" "$(printf 'one\ntwo')" "cat /etc/a"
check "deleted base file is gone" "gone" "test -e /opt/hello.txt && echo there || echo gone"
check "re-created directory holds only the new file" "y" "ls /d"
check "hard link made through the mount" "2" "stat -c %h /etc/a-link"
check "chmod of a base file" "600" "stat -c %a /keep/k"
check "untouched base file" "k" "cat /keep/k"
check "a directory moved in a lower layer and again above it" "$(printf 'new\nsub\nt')" "ls /mv3"
check "its base files came along" "m" "cat /mv3/sub/f"
check "its old names are gone" "gone gone" \
    "for p in /mv /mv2; do test -e \$p && echo -n there || echo -n gone; [ \$p = /mv ] && echo -n ' '; done; echo"
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
