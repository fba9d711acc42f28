#!/bin/sh
# Regenerates testclip.flv, the clip the built-in publisher loops (origin/src/publisher.rs).
#
# 10 s of test pattern + 1 kHz tone: H.264 main profile at 30 fps with a keyframe exactly every
# 60 frames (2 s, no scene-cut keyframes) and AAC-LC, so segments cut at the default 2 s target
# land on the same keyframes every loop; the duration is a multiple of 2 s so looping with
# continuous timestamps keeps the keyframe grid. B-frames stay on so the muxer's
# composition-time handling is exercised. One encoder thread and +bitexact make the output
# byte-identical across runs. Run from anywhere: sh origin/assets/make-testclip.sh
set -eu
cd "$(dirname "$0")"
ffmpeg -hide_banner -loglevel error -y \
  -f lavfi -i "testsrc=size=640x360:rate=30" \
  -f lavfi -i "sine=frequency=1000:beep_factor=4:sample_rate=48000" \
  -t 10 \
  -c:v libx264 -threads 1 -profile:v main -preset veryfast -pix_fmt yuv420p \
  -b:v 600k -maxrate 700k -bufsize 1400k \
  -x264opts keyint=60:min-keyint=60:scenecut=-1 \
  -c:a aac -b:a 96k -ac 2 \
  -fflags +bitexact -flags:v +bitexact -flags:a +bitexact \
  -f flv testclip.flv
