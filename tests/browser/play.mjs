// Plays an MP4 to its end in headless Debian Chromium and prints what the browser saw as JSON:
// duration, frames decoded and dropped, and whether the `ended` event fired.
// Usage: node play.mjs FILE.mp4 [SCREENSHOT.png]
import { chromium } from 'playwright-core';
import http from 'node:http';
import fs from 'node:fs';

const [file, screenshot] = process.argv.slice(2);
if (!file) {
  console.error('usage: node play.mjs FILE.mp4 [SCREENSHOT.png]');
  process.exit(2);
}
const video = fs.readFileSync(file);
const page = `<!doctype html><body style="margin:0;background:#222">
<video id="v" src="/clip.mp4" muted playsinline style="width:100%"></video></body>`;

// Served over HTTP with byte ranges, as a real server would (and as the studio page will be).
const server = http.createServer((req, res) => {
  if (req.url !== '/clip.mp4') {
    res.writeHead(200, { 'Content-Type': 'text/html' });
    return res.end(page);
  }
  const range = /bytes=(\d+)-(\d*)/.exec(req.headers.range || '');
  if (!range) {
    res.writeHead(200, { 'Content-Type': 'video/mp4', 'Content-Length': video.length, 'Accept-Ranges': 'bytes' });
    return res.end(video);
  }
  const start = Number(range[1]);
  const end = range[2] ? Number(range[2]) : video.length - 1;
  res.writeHead(206, {
    'Content-Type': 'video/mp4',
    'Content-Range': `bytes ${start}-${end}/${video.length}`,
    'Content-Length': end - start + 1,
    'Accept-Ranges': 'bytes',
  });
  res.end(video.subarray(start, end + 1));
});
await new Promise((ok) => server.listen(0, '127.0.0.1', ok));
const url = `http://127.0.0.1:${server.address().port}/`;

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
    '--autoplay-policy=no-user-gesture-required'],
});
try {
  const tab = await browser.newPage();
  await tab.goto(url);
  const result = await tab.evaluate(() => new Promise((resolve) => {
    const v = document.getElementById('v');
    const done = (ended, error) => {
      const q = v.getVideoPlaybackQuality();
      resolve({
        ended, error, duration: v.duration, width: v.videoWidth, height: v.videoHeight,
        totalVideoFrames: q.totalVideoFrames, droppedVideoFrames: q.droppedVideoFrames,
        canPlay: v.canPlayType('video/mp4; codecs="avc1.42E01E"'),
      });
    };
    v.addEventListener('ended', () => done(true, null));
    v.addEventListener('error', () => done(false, v.error && v.error.message || 'media error'));
    setTimeout(() => done(false, 'timeout'), 30000);
    v.play().catch((e) => done(false, String(e)));
  }));
  if (screenshot) await tab.screenshot({ path: screenshot });
  console.log(JSON.stringify(result));
} finally {
  await browser.close();
  server.close();
}
