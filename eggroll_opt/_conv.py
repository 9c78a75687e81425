"""Convolutions as one GEMM on im2col patches, with the batch innermost in memory.

The patch matrix of a (..., B, C, H, W) input is (..., C·kh·kw, H_out·W_out·B): row
``(c, i, j)`` follows the kernel's (C, kh, kw) order, column ``(y, x, b)`` is image ``b``'s
output position, the image index running fastest. ``kernel.reshape(out, -1) @ columns`` is then
the convolution laid out (out, H_out, W_out, B), which is what the next convolution's patches
read: handed on as a view with the public axis order (..., B, out, H_out, W_out), it is never
transposed between layers, and the next im2col copies runs of B contiguous values whatever
the stride. (The image-major order, columns ``(b, y, x)``, needs a transposing copy of every
layer's output and copies runs of a single value at stride 2; ``python -m benchmarks.cnn_profile``
gives the MNIST CNN's layers before and after, docs/benchmarks.md a run.)

A caller that wants the usual C-contiguous (..., B, out, H, W) array calls
``ascontiguousarray`` on the output; every element-wise operation and reshape works on the
view as it is.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._backend import namespace_of


def patches(
    x: Any, kernel: tuple[int, ...], stride: int, padding: int
) -> tuple[Any, tuple[int, int]]:
    """im2col, batch innermost: (..., B, C, H, W) -> (..., C·kh·kw, H_out·W_out·B).

    ``x`` may be any strided view; the windows are one strided view of the (zero-padded)
    input, written out in a single copy. Returns the columns and ``(H_out, W_out)``.
    """
    xp = namespace_of(x)
    if x.ndim < 4:
        raise ValueError(f"`x` must be (..., batch, C, H, W), got shape {tuple(x.shape)}.")
    # (..., C, H, W, B): a view, and already the memory order for a previous layer's output.
    x = xp.moveaxis(x, -4, -1)
    if padding:
        padded = xp.zeros(_padded_shape(x.shape, padding), x.dtype)
        padded[..., padding:-padding, padding:-padding, :] = x
        x = padded
    view = windows(x, kernel, stride)
    *lead, channels, kh, kw, out_h, out_w, batch = view.shape
    return view.reshape(*lead, channels * kh * kw, out_h * out_w * batch), (out_h, out_w)


def _padded_shape(shape: tuple[int, ...], padding: int) -> tuple[int, ...]:
    """(..., C, H, W, B) with ``padding`` zeros on each side of H and W."""
    *lead, height, width, batch = shape
    return (*lead, height + 2 * padding, width + 2 * padding, batch)


def windows(x: Any, kernel: tuple[int, ...], stride: int) -> Any:
    """The (..., C, kh, kw, H_out, W_out, B) view of every window of a (..., C, H, W, B) input."""
    kh, kw = kernel
    height, width = x.shape[-3], x.shape[-2]
    out_h = (height - kh) // stride + 1
    out_w = (width - kw) // stride + 1
    if out_h < 1 or out_w < 1:
        raise ValueError(f"the input {(height, width)} is smaller than the kernel {kernel}.")
    *lead, channels, _, _, batch = x.shape
    *lead_strides, channel_stride, row_stride, column_stride, batch_stride = x.strides
    return namespace_of(x).lib.stride_tricks.as_strided(
        x,
        (*lead, channels, kh, kw, out_h, out_w, batch),
        (
            *lead_strides,
            channel_stride,
            row_stride,
            column_stride,
            row_stride * stride,
            column_stride * stride,
            batch_stride,
        ),
    )


def images_view(out: Any, out_h: int, out_w: int, batch: int) -> Any:
    """(..., out, H·W·B) -> the view (..., B, out, H, W) of the same memory."""
    out = out.reshape(*out.shape[:-1], out_h, out_w, batch)
    return namespace_of(out).moveaxis(out, -1, -4)


def output_size(
    size: tuple[int, int], kernel: tuple[int, ...], stride: int, padding: int
) -> tuple[int, int]:
    """(H_out, W_out) of a convolution of an (H, W) input."""
    return (
        (size[0] + 2 * padding - kernel[0]) // stride + 1,
        (size[1] + 2 * padding - kernel[1]) // stride + 1,
    )


def member_by_member(
    kernels: Any, x: Any, stride: int, padding: int, bias: Any | None = None
) -> Any:
    """Each member's convolution with its own kernel (and bias), one member at a time, on NumPy.

    ``kernels`` is (N, out, C, kh, kw), ``x`` (N, B, C, H, W), ``bias`` (N, out) or None;
    returns (N, out, H_out·W_out·B). A member's patch matrix is made and multiplied at once,
    while it is still in the cache (the patches of all members, made first, then multiplied,
    are read back from main memory). The
    patches and the padded input are buffers reused from member to member, and a bias is a
    last column of the kernel against a row of ones under the patches, so the GEMM adds it.
    On a GPU, where each call is a kernel launch, the batched product of
    :meth:`Population.matmul` is the way.
    """
    members, out_channels, channels, kh, kw = kernels.shape
    out_h, out_w = output_size(x.shape[-2:], (kh, kw), stride, padding)
    depth, length = channels * kh * kw, out_h * out_w * x.shape[-4]
    weights = kernels.reshape(members, out_channels, depth)
    if bias is not None:
        weights = np.concatenate([weights, bias.astype(weights.dtype)[:, :, None]], axis=2)
    out = np.empty((members, out_channels, length), np.result_type(weights.dtype, x.dtype))
    columns = np.empty((weights.shape[2], length), x.dtype)
    columns[depth:] = 1
    rows = columns[:depth].reshape(channels, kh, kw, out_h, out_w, x.shape[-4])
    inputs = np.moveaxis(x, -4, -1)  # (N, C, H, W, B)
    padded = np.zeros(_padded_shape(inputs.shape[1:], padding), x.dtype) if padding else None
    for member in range(members):
        source = inputs[member]
        if padded is not None:  # the border stays zero, the inside is overwritten
            padded[:, padding:-padding, padding:-padding, :] = source
            source = padded
        rows[...] = windows(source, (kh, kw), stride)
        np.matmul(weights[member], columns, out=out[member])
    return out
