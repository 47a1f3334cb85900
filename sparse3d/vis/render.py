"""Drawing a :class:`~sparse3d.vis.scene.Scene` with Open3D's legacy OpenGL ``Visualizer``: headless captures to
PNG or an MP4 turntable, or an interactive window.

Headless rendering needs no X server: ``Visualizer.create_window(visible=False)`` falls back to an offscreen
Mesa EGL context when no display is found (system packages ``libegl1 libegl-mesa0 libgl1-mesa-dri``; importing
Open3D also needs ``libusb-1.0-0``). Open3D's Filament ``OffscreenRenderer`` is deliberately not used: it
needs Vulkan and aborts the process where the driver is missing.

The renderer uses a :class:`~sparse3d.vis.camera.ViewCamera` exactly as given (intrinsics included), so a
world point lands in the image where :meth:`ViewCamera.project` says. Points, lines, unshaded meshes (image
planes) and the background are drawn in their exact colours; shaded meshes are lit by the viewer's light.

Output files are written under a temporary name in the target folder and renamed when complete, so a failed
or interrupted run never leaves a partial PNG or MP4 behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from sparse3d.io.atomic import atomic_path
from sparse3d.utils.errors import UserError
from sparse3d.vis.camera import ViewCamera
from sparse3d.vis.scene import CoordinateFrame, Drawable, Lines, Mesh, Points, Scene, Voxels

__all__ = ["display_available", "to_open3d", "render_images", "save_png", "save_turntable", "show",
           "atomic_output"]

HEADLESS_PACKAGES = "libegl1 libegl-mesa0 libgl1-mesa-dri"


def display_available(env: Mapping[str, str] | None = None) -> bool:
    """True when a window can be opened: ``DISPLAY`` names an X server that accepts a connection, or
    ``WAYLAND_DISPLAY`` names a socket that exists (under ``XDG_RUNTIME_DIR`` unless absolute)."""
    env = os.environ if env is None else env
    wayland = env.get("WAYLAND_DISPLAY")
    if wayland:
        sock = Path(wayland) if os.path.isabs(wayland) else Path(env.get("XDG_RUNTIME_DIR", "/nonexistent")) / wayland
        if sock.exists():
            return True
    display = env.get("DISPLAY")
    if not display:
        return False
    name = ctypes.util.find_library("X11")
    if name is None:
        return False
    try:
        xlib = ctypes.CDLL(name)
    except OSError:
        return False
    xlib.XOpenDisplay.restype = ctypes.c_void_p
    xlib.XOpenDisplay.argtypes = [ctypes.c_char_p]
    handle = xlib.XOpenDisplay(display.encode())
    if not handle:
        return False
    xlib.XCloseDisplay.argtypes = [ctypes.c_void_p]
    xlib.XCloseDisplay(handle)
    return True


def _o3d() -> Any:
    import open3d as o3d

    o3d.utility.set_verbosity_level(o3d.utility.VerbosityLevel.Error)
    return o3d


def to_open3d(drawable: Drawable) -> list[Any]:
    """The Open3D legacy geometries of one drawable (voxels become their cube mesh)."""
    o3d = _o3d()
    v3 = o3d.utility.Vector3dVector
    if isinstance(drawable, Points):
        pc = o3d.geometry.PointCloud(v3(drawable.positions.astype(np.float64)))
        pc.colors = v3(drawable.colors.astype(np.float64))
        return [pc]
    if isinstance(drawable, Lines):
        ls = o3d.geometry.LineSet(v3(drawable.vertices.astype(np.float64)),
                                  o3d.utility.Vector2iVector(drawable.segments.astype(np.int32)))
        ls.colors = v3(drawable.colors.astype(np.float64))
        return [ls]
    if isinstance(drawable, Voxels):
        return to_open3d(drawable.to_mesh())
    if isinstance(drawable, Mesh):
        mesh = o3d.geometry.TriangleMesh(v3(drawable.vertices.astype(np.float64)),
                                         o3d.utility.Vector3iVector(drawable.faces.astype(np.int32)))
        mesh.vertex_colors = v3(drawable.vertex_colors.astype(np.float64))
        if drawable.shaded and drawable.normals is not None:
            mesh.vertex_normals = v3(drawable.normals.astype(np.float64))  # without normals Open3D draws unlit
        return [mesh]
    if isinstance(drawable, CoordinateFrame):
        return [o3d.geometry.TriangleMesh.create_coordinate_frame(size=float(drawable.size),
                                                                  origin=drawable.origin.astype(np.float64))]
    raise TypeError(f"cannot draw {type(drawable).__name__}")


@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """Send the process's file descriptor 2 to /dev/null for the block: GLFW and the Wayland client library
    print probing noise ("XDG_RUNTIME_DIR is invalid...") from C while an offscreen context is created."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


@contextlib.contextmanager
def _window(scene: Scene, width: int, height: int, visible: bool) -> Iterator[Any]:
    """An Open3D Visualizer holding the scene's geometry, destroyed on exit."""
    o3d = _o3d()
    vis = o3d.visualization.Visualizer()
    with contextlib.nullcontext() if visible else _native_stderr_silenced():
        created = vis.create_window(window_name="sparse3d-vis", width=int(width), height=int(height), visible=visible)
    if not created:
        where = "a window" if visible else f"an offscreen OpenGL context (EGL; install {HEADLESS_PACKAGES})"
        raise UserError(f"rendering: Open3D could not open {where}")
    try:
        for d in scene.drawables:
            for geometry in to_open3d(d):
                vis.add_geometry(geometry)
        opt = vis.get_render_option()
        opt.background_color = np.asarray(scene.background, dtype=np.float64)
        opt.point_size = float(scene.point_size)
        opt.mesh_show_back_face = True  # open meshes and image planes seen from behind stay visible
        opt.light_on = True
        yield vis
    finally:
        vis.destroy_window()


def _apply_camera(vis: Any, camera: ViewCamera) -> None:
    o3d = _o3d()
    params = o3d.camera.PinholeCameraParameters()
    params.intrinsic = o3d.camera.PinholeCameraIntrinsic(camera.width, camera.height, np.asarray(camera.K, np.float64))
    params.extrinsic = np.asarray(camera.extrinsic, np.float64)
    if not vis.get_view_control().convert_from_pinhole_camera_parameters(params, allow_arbitrary=True):
        raise UserError("rendering: Open3D refused the view camera")


def render_images(scene: Scene, cameras: Sequence[ViewCamera]) -> Iterator[np.ndarray]:
    """Render ``scene`` from each camera (all of one image size) headless; yields (H, W, 3) uint8 RGB images."""
    if not cameras:
        return
    size = {(c.width, c.height) for c in cameras}
    if len(size) != 1:
        raise ValueError(f"all cameras must share one image size, got {sorted(size)}")
    width, height = size.pop()
    with _window(scene, width, height, visible=False) as vis:
        for camera in cameras:
            _apply_camera(vis, camera)
            buffer = np.asarray(vis.capture_screen_float_buffer(do_render=True))
            if buffer.shape[:2] != (height, width):
                raise UserError(f"rendering: captured {buffer.shape[1]}x{buffer.shape[0]}, expected {width}x{height}")
            yield np.clip(np.rint(buffer * 255.0), 0, 255).astype(np.uint8)


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path`` (same suffix); rename it to ``path`` when the block succeeds,
    delete it when the block raises."""
    target = Path(path)
    if not target.parent.is_dir():
        raise UserError(f"{target}: folder {target.parent} does not exist")
    with atomic_path(target, fsync=False) as tmp:
        yield tmp


def save_png(scene: Scene, camera: ViewCamera, path: str | os.PathLike) -> Path:
    """Render one image headless and write it as an 8-bit RGB PNG at ``path``."""
    target = Path(path)
    with atomic_output(target) as tmp:
        (image,) = list(render_images(scene, [camera]))
        if not cv2.imwrite(str(tmp), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
            raise UserError(f"{target}: could not write the PNG")
    return target


def save_turntable(scene: Scene, cameras: Sequence[ViewCamera], path: str | os.PathLike, fps: float = 30.0) -> Path:
    """Render one frame per camera headless and write them as an MPEG-4 Part 2 (``mp4v``) video at ``path``.

    The codec needs an even image width and height.
    """
    target = Path(path)
    if not cameras:
        raise ValueError("a turntable needs at least one camera")
    width, height = cameras[0].width, cameras[0].height
    if width % 2 or height % 2:
        raise UserError(f"--size: an MP4 needs an even width and height, got {width}x{height}")
    if not fps > 0:
        raise UserError(f"--fps: must be positive, got {fps}")
    with atomic_output(target) as tmp:
        writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter.fourcc(*"mp4v"), float(fps), (width, height))
        if not writer.isOpened():
            raise UserError(f"{target}: OpenCV cannot write MP4 (mp4v) video here")
        try:
            for image in render_images(scene, cameras):
                writer.write(cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        finally:
            writer.release()
    return target


def show(scene: Scene, camera: ViewCamera) -> None:
    """Open an interactive window (blocks until it is closed). Open3D's keys apply: mouse to orbit, W toggles
    the mesh wireframe, +/- change the point size, H prints the key list."""
    if not display_available():
        raise UserError("--save: no display found (DISPLAY / WAYLAND_DISPLAY unset or unreachable); "
                        "pass --save out.png to render headless")
    with _window(scene, camera.width, camera.height, visible=True) as vis:
        _apply_camera(vis, camera)
        vis.run()
