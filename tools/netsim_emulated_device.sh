#!/usr/bin/env bash
# tools/netsim_emulated.py on the lent GPU machine's idle CPUs (device tool, as root), in one call:
#   device run: NETSIM_COLLECTIVES=allreduce bash tools/netsim_emulated_device.sh   (then alltoall)
# That machine has no iproute2: when `ip` or `tc` is missing, the Debian packages under
# shared/netsim-debs (iproute2 and the libraries it needs beyond libc, zlib, selinux and pcre2; fetch
# them with `apt-get download` on the developer box) are unpacked to /tmp/netsim-iproute2 and run
# through wrappers that set LD_LIBRARY_PATH for ip and tc alone. Rows land in $OUT/<collective>.json.
set -euo pipefail
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
OUT="${OUT:-bench-results}"
mkdir -p "$OUT"
if ! command -v ip >/dev/null || ! command -v tc >/dev/null; then
    root=/tmp/netsim-iproute2
    mkdir -p "$root/wrap"
    for deb in shared/netsim-debs/*.deb; do dpkg -x "$deb" "$root"; done
    libs="$root/libs"
    mkdir -p "$libs"
    for lib in libbpf libbsd libcap libdb-5 libelf libmnl libtirpc libxtables libmd; do
        cp -a "$root"/lib/x86_64-linux-gnu/"$lib"*.so* "$root"/usr/lib/x86_64-linux-gnu/"$lib"*.so* "$libs"/ 2>/dev/null || true
    done
    for tool in ip tc; do
        bin=""
        for dir in bin sbin usr/bin usr/sbin; do
            if [[ -x "$root/$dir/$tool" ]]; then bin="$root/$dir/$tool"; break; fi
        done
        [[ -n "$bin" ]] || { echo "no $tool in shared/netsim-debs" >&2; exit 1; }
        printf '#!/bin/sh\nLD_LIBRARY_PATH=%s exec %s "$@"\n' "$libs" "$bin" > "$root/wrap/$tool"
        chmod +x "$root/wrap/$tool"
    done
    export PATH="$root/wrap:$PATH"
fi
ip -V
echo "cpus: $(nproc); python $(python3 -c 'import sys; print(sys.version.split()[0])')"
status=0
for collective in ${NETSIM_COLLECTIVES:-allreduce alltoall}; do
    python3 tools/netsim_emulated.py --collectives "$collective" --out "$OUT/$collective.json" ${NETSIM_ARGS:-} || status=1
done
exit $status
