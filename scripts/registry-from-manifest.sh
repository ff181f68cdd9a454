#!/usr/bin/env bash
# Regenerates data/files.tsv (the registry's file table: path, bytes, sha256, upstream URL) from the
# mirror's MANIFEST.tsv. Run by a developer when the mirror changes; the output is committed, the
# mirrored files themselves never are.
set -euo pipefail
mirror=${1:-${P2M_MIRROR:-../shared/mirror}}
out=${2:-data/files.tsv}
tmp=$(mktemp "$out.XXXX")
{
  printf 'path\tbytes\tsha256\turl\tsource\n'
  tail -n +2 "$mirror/MANIFEST.tsv" | awk -F'\t' '
    {
      path=$1; bytes=$2; sha=$3; src=$4; url="";
      if (path == "squad/dev-v1.1.json") {
        # The mirror unzipped a third-party zip; the same bytes are the official file.
        url = "https://rajpurkar.github.io/SQuAD-explorer/dataset/dev-v1.1.json";
      } else if (src ~ /^[^ ]+@[0-9a-f]+:[^ ]+$/ && src !~ /\/$/) {
        split(src, a, "@"); split(a[2], b, ":");
        url = "https://raw.githubusercontent.com/" a[1] "/" b[1] "/" b[2];
      }
      gsub(/\t/, " ", src);
      printf "%s\t%s\t%s\t%s\t%s\n", path, bytes, sha, url, src;
    }'
} > "$tmp"
mv "$tmp" "$out"
echo "wrote $out ($(($(wc -l < "$out") - 1)) files)"
