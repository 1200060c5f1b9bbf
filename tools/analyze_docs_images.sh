#!/usr/bin/env bash
# Regenerate the pictures in docs/analyze.md from the built-in demo face (edge/assets), with the real commands:
#   docs/img/demo_frame_annotated.jpg  (affect-sensor analyze --annotate on one demo frame)
#   docs/img/analyze_plot.png          (affect-sensor analyze --plot on an 8 s demo video)
# Needs the plot extra (matplotlib). Run from anywhere: tools/analyze_docs_images.sh
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p docs/img
python -m edge.analysis.demo_media "$work"
affect-sensor analyze "$work/demo.mp4" --csv "$work/demo.csv" --annotate "$work/annotated" \
  --plot docs/img/analyze_plot.png
affect-sensor analyze "$work/demo_frame.jpg" --annotate docs/img
head -c 600 "$work/demo.csv"; echo
ls -l docs/img/demo_frame_annotated.jpg docs/img/analyze_plot.png
