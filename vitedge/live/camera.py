"""Frame sources: one `FrameSource.open(uri)` for cameras, files, folders and network streams.

Like jetson-inference's videoSource, the URI decides the kind:
- `0`, `1`, ... or `/dev/videoN`: a V4L2 camera (width/height/fps requested, not guaranteed);
- `rtsp://...`, `http(s)://...` (e.g. an MJPEG stream): OpenCV's FFmpeg backend with open/read
  timeouts, so a stalled stream is noticed;
- a string containing `!`: a GStreamer pipeline ending in appsink, e.g. the Jetson CSI camera
  `nvarguscamerasrc ! video/x-raw(memory:NVMM),width=1280,height=720,framerate=30/1 !
  nvvidconv ! video/x-raw,format=BGRx ! videoconvert ! video/x-raw,format=BGR ! appsink drop=1`
  (needs an OpenCV built with GStreamer, as JetPack's is; PyPI's wheels are not);
- a video file (`--loop` repeats it), an image file, a folder or a glob of images.

Live sources (cameras, streams, pipelines) are read by a capture thread that keeps only the
newest frame: a frame the consumer had no time for is dropped and counted, so latency stays
low. When a live source stops delivering, it is reopened with backoff until `reconnect_s` have
passed, then the stream ends. Files and folders deliver every frame, in order.
"""

from __future__ import annotations

import os
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vitedge.data import VideoFile, check_frame_size, is_video, open_images
from vitedge.errors import InputError

# OpenCV and FFmpeg print every failed reconnect attempt; vitedge reports them as events instead.
os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")

JETSON_CSI_PIPELINE = (
    "nvarguscamerasrc sensor-id=0 ! video/x-raw(memory:NVMM),width=1280,height=720,framerate=30/1 "
    "! nvvidconv ! video/x-raw,format=BGRx ! videoconvert ! video/x-raw,format=BGR ! appsink drop=1")


@dataclass
class Frame:
    index: int  # position in delivery order, from 0
    image: np.ndarray | None  # BGR (or grayscale) uint8; None for a frame that could not be decoded
    time: float  # time.monotonic() when captured
    name: str = ""  # file name for folders, frame number for videos


@dataclass
class SourceStats:
    read: int = 0  # frames the source produced (delivered + dropped)
    delivered: int = 0
    dropped: int = 0  # live only: overwritten before the consumer took them
    corrupt: int = 0  # delivered without a decodable image
    reconnects: int = 0
    loops: int = 0
    events: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class FrameSource(ABC):
    """Iterate frames until the source ends; `stats` counts what happened."""

    live: bool = False

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.stats = SourceStats()
        self.fps: float | None = None

    @staticmethod
    def open(uri: str | int, *, width: int | None = None, height: int | None = None,
             fps: float | None = None, loop: bool = False, reconnect_s: float = 10.0,
             open_timeout_s: float = 10.0) -> FrameSource:
        text = str(uri)
        if text.isdigit() or text.startswith("/dev/video"):
            return LiveSource(text, lambda: _open_camera(text, width, height, fps),
                              reconnect_s=reconnect_s, open_timeout_s=open_timeout_s)
        if text.startswith(("rtsp://", "rtsps://", "http://", "https://")):
            return LiveSource(text, lambda: _open_stream(text, open_timeout_s),
                              reconnect_s=reconnect_s, open_timeout_s=open_timeout_s)
        if "!" in text:
            return LiveSource(text, lambda: _open_gstreamer(text), reconnect_s=reconnect_s,
                              open_timeout_s=open_timeout_s)
        path = Path(text)
        if is_video(path):
            return VideoFileSource(path, loop=loop)
        if not path.exists() and not any(c in text for c in "*?["):
            raise InputError(f"source {text!r} does not exist",
                             "pass a camera index (0), /dev/videoN, a video file, an image folder or "
                             "glob, rtsp://..., http://... or a GStreamer pipeline")
        return ImageSource(text, [r.path for r in open_images(text).records], loop=loop)

    @abstractmethod
    def read(self) -> Frame | None:
        """The next frame, or None when the source has ended."""

    def close(self) -> None:
        """Release the device or file."""

    def __iter__(self) -> Iterator[Frame]:
        while (frame := self.read()) is not None:
            yield frame

    def __enter__(self) -> FrameSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ImageSource(FrameSource):
    def __init__(self, uri: str, paths: list[Path], *, loop: bool = False) -> None:
        super().__init__(uri)
        self.paths = paths
        self.loop = loop
        self._next = 0

    def read(self) -> Frame | None:
        if self._next >= len(self.paths):
            if not self.loop or not self.paths:
                return None
            self._next = 0
            self.stats.loops += 1
        path = self.paths[self._next]
        self._next += 1
        from vitedge.preprocess import UnreadableImageError, load_frame

        try:
            image = load_frame(path)  # the one decoder (and pixel limit) every data source uses
        except UnreadableImageError:
            image = None
        return self._deliver(image, path.name)

    def _deliver(self, image: np.ndarray | None, name: str) -> Frame:
        frame = Frame(self.stats.delivered, image if image is not None and image.size else None,
                      time.monotonic(), name)
        self.stats.read += 1
        self.stats.delivered += 1
        self.stats.corrupt += frame.image is None
        return frame


class VideoFileSource(ImageSource):
    def __init__(self, path: Path, *, loop: bool = False) -> None:
        super().__init__(str(path), [], loop=loop)
        self.video = VideoFile(path)
        self.fps = self.video.fps
        self.frame_count = self.video.frame_count
        self._position = 0

    def read(self) -> Frame | None:
        image = self.video.read()
        if image is None:
            if not self.loop or self._position == 0:
                return None
            self.video.rewind()
            self.stats.loops += 1
            self._position = 0
            image = self.video.read()
            if image is None:
                return None
        self._position += 1
        return self._deliver(image, str(self._position - 1))

    def close(self) -> None:
        self.video.close()


# ------------------------------------------------------------------------------------- live
def _open_camera(text: str, width: int | None, height: int | None, fps: float | None) -> Any:
    import cv2

    index: int | str = int(text) if text.isdigit() else text
    capture = cv2.VideoCapture(index, cv2.CAP_V4L2)
    for prop, value in ((cv2.CAP_PROP_FRAME_WIDTH, width), (cv2.CAP_PROP_FRAME_HEIGHT, height),
                        (cv2.CAP_PROP_FPS, fps)):
        if value:
            capture.set(prop, value)
    capture.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # the newest frame, not a queue of old ones
    return capture


def _open_stream(url: str, open_timeout_s: float) -> Any:
    import cv2

    return cv2.VideoCapture(url, cv2.CAP_FFMPEG, [
        cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(open_timeout_s * 1000),
        cv2.CAP_PROP_READ_TIMEOUT_MSEC, 5000])


def _open_gstreamer(pipeline: str) -> Any:
    import cv2

    if "GStreamer:                   YES" not in cv2.getBuildInformation():
        raise InputError("this OpenCV was built without GStreamer, so the pipeline cannot run",
                         "use the OpenCV that JetPack ships (python3-opencv), or a camera index")
    return cv2.VideoCapture(pipeline, cv2.CAP_GSTREAMER)


class LiveSource(FrameSource):
    """A capture thread keeps the newest frame; reconnects with backoff when the source stalls."""

    live = True

    def __init__(self, uri: str, opener: Callable[[], Any], *, reconnect_s: float = 10.0,
                 open_timeout_s: float = 10.0) -> None:
        super().__init__(uri)
        self._opener = opener
        self.reconnect_s = reconnect_s
        self._latest: Frame | None = None
        self._ended = False
        self._stop = threading.Event()
        self._ready = threading.Condition()
        started = time.monotonic()
        self.capture = self._try_open()
        while self.capture is None and time.monotonic() - started < open_timeout_s:
            time.sleep(0.25)
            self.capture = self._try_open()
        if self.capture is None:
            raise InputError(f"source {uri} could not be opened within {open_timeout_s:.0f} s",
                             "check the camera index / URL, that nothing else holds the device, "
                             "and that the stream is up")
        import cv2

        try:
            check_frame_size(self.capture, uri)
        except InputError:
            self.capture.release()
            raise
        self.fps = self.capture.get(cv2.CAP_PROP_FPS) or None
        self._thread = threading.Thread(target=self._capture_loop, name="vitedge-capture", daemon=True)
        self._thread.start()

    def _try_open(self) -> Any:
        capture = self._opener()
        if capture is not None and capture.isOpened():
            return capture
        if capture is not None:
            capture.release()
        return None

    def _capture_loop(self) -> None:
        while not self._stop.is_set():
            ok, image = self.capture.read()
            if not ok:
                if not self._reconnect():
                    break
                continue
            with self._ready:
                self.stats.read += 1
                if self._latest is not None:
                    self.stats.dropped += 1
                self._latest = Frame(-1, image if image is not None and image.size else None,
                                     time.monotonic())
                self._ready.notify()
        with self._ready:
            self._ended = True
            self._ready.notify_all()

    def _reconnect(self) -> bool:
        """Reopen with backoff (0.25 s doubling to 2 s) until reconnect_s pass; False: give up."""
        self.capture.release()
        self.stats.events.append({"time": time.time(), "event": "disconnected"})
        deadline = time.monotonic() + self.reconnect_s
        delay = 0.25
        while not self._stop.is_set() and time.monotonic() < deadline:
            self._stop.wait(delay)
            capture = self._try_open()
            if capture is not None:
                self.capture = capture
                self.stats.reconnects += 1
                self.stats.events.append({"time": time.time(), "event": "reconnected"})
                return True
            delay = min(delay * 2, 2.0)
        self.stats.events.append({"time": time.time(), "event": "gave up",
                                  "after_s": self.reconnect_s})
        return False

    def read(self, timeout: float | None = None) -> Frame | None:
        with self._ready:
            if not self._ready.wait_for(lambda: self._latest is not None or self._ended, timeout):
                return None
            if self._latest is None:
                return None
            frame, self._latest = self._latest, None
        frame.index = self.stats.delivered
        self.stats.delivered += 1
        self.stats.corrupt += frame.image is None
        return frame

    @property
    def ended(self) -> bool:
        """The capture thread gave up (or was stopped) and every frame it had was taken."""
        with self._ready:
            return self._ended and self._latest is None

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.capture.release()
        with self._ready:  # a frame captured but never taken was dropped
            if self._latest is not None:
                self.stats.dropped += 1
                self._latest = None
