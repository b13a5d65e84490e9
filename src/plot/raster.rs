//! An RGB pixel canvas with anti-aliased strokes, bitmap text and a PNG encoder.

use super::font;
use anyhow::{Context, Result};
use flate2::write::ZlibEncoder;
use flate2::{Compression, Crc};
use std::io::Write;

pub type Rgb = [u8; 3];

/// A clip rectangle in pixels: `x..x+w`, `y..y+h`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rect {
    pub x: usize,
    pub y: usize,
    pub w: usize,
    pub h: usize,
}

pub struct Canvas {
    pub width: usize,
    pub height: usize,
    pixels: Vec<Rgb>,
}

impl Canvas {
    pub fn new(width: usize, height: usize, background: Rgb) -> Canvas {
        Canvas {
            width,
            height,
            pixels: vec![background; width * height],
        }
    }

    pub fn pixel(&self, x: usize, y: usize) -> Rgb {
        self.pixels[y * self.width + x]
    }

    /// Fills `x..x+w`, `y..y+h`, clipped to the canvas.
    pub fn fill_rect(&mut self, x: i64, y: i64, w: i64, h: i64, color: Rgb) {
        let (x0, x1) = (x.max(0), (x + w).min(self.width as i64));
        let (y0, y1) = (y.max(0), (y + h).min(self.height as i64));
        for yy in y0..y1 {
            for xx in x0..x1 {
                self.pixels[yy as usize * self.width + xx as usize] = color;
            }
        }
    }

    /// A one-pixel outline of `r`, drawn just outside it.
    pub fn frame(&mut self, r: Rect, color: Rgb) {
        let (x, y, w, h) = (r.x as i64, r.y as i64, r.w as i64, r.h as i64);
        self.fill_rect(x - 1, y - 1, w + 2, 1, color);
        self.fill_rect(x - 1, y + h, w + 2, 1, color);
        self.fill_rect(x - 1, y - 1, 1, h + 2, color);
        self.fill_rect(x + w, y - 1, 1, h + 2, color);
    }

    fn blend(&mut self, x: usize, y: usize, color: Rgb, alpha: f32) {
        let p = &mut self.pixels[y * self.width + x];
        if alpha >= 1.0 {
            *p = color;
            return;
        }
        for (c, &target) in p.iter_mut().zip(&color) {
            *c = (*c as f32 + (target as f32 - *c as f32) * alpha).round() as u8;
        }
    }

    /// Draws `text` with its top-left corner at (`x`, `y`), each font pixel `scale` x `scale`
    /// screen pixels; `bold` draws it twice, one pixel apart.
    pub fn text(&mut self, x: i64, y: i64, text: &str, scale: usize, color: Rgb, bold: bool) {
        let s = scale as i64;
        for (i, c) in text.chars().enumerate() {
            let gx = x + (i * font::ADVANCE) as i64 * s;
            for (row, bits) in font::glyph(c).iter().enumerate() {
                for (col, bit) in bits.bytes().enumerate() {
                    if bit == b'#' {
                        let (px, py) = (gx + col as i64 * s, y + row as i64 * s);
                        self.fill_rect(px, py, s + bold as i64, s, color);
                    }
                }
            }
        }
    }

    /// Paints `layer`'s coverage in `color`.
    pub fn composite(&mut self, layer: &Coverage, color: Rgb) {
        let r = layer.rect;
        for yy in 0..r.h {
            for xx in 0..r.w {
                let a = layer.cov[yy * r.w + xx];
                if a > 0.0 {
                    self.blend(r.x + xx, r.y + yy, color, a);
                }
            }
        }
    }

    /// The canvas as an 8-bit RGB PNG.
    pub fn to_png(&self) -> Result<Vec<u8>> {
        let mut raw = Vec::with_capacity(self.height * (1 + 3 * self.width));
        for row in self.pixels.chunks_exact(self.width) {
            raw.push(0); // filter type None
            for p in row {
                raw.extend_from_slice(p);
            }
        }
        let mut z = ZlibEncoder::new(Vec::new(), Compression::default());
        z.write_all(&raw).context("cannot compress the image")?;
        let idat = z.finish().context("cannot compress the image")?;

        let mut ihdr = Vec::with_capacity(13);
        ihdr.extend_from_slice(&(self.width as u32).to_be_bytes());
        ihdr.extend_from_slice(&(self.height as u32).to_be_bytes());
        // Bit depth 8, colour type 2 (RGB), deflate, adaptive filtering, no interlace.
        ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);

        let mut png = Vec::with_capacity(idat.len() + 64);
        png.extend_from_slice(b"\x89PNG\r\n\x1a\n");
        chunk(&mut png, b"IHDR", &ihdr);
        chunk(&mut png, b"IDAT", &idat);
        chunk(&mut png, b"IEND", &[]);
        Ok(png)
    }
}

fn chunk(png: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    png.extend_from_slice(&(data.len() as u32).to_be_bytes());
    png.extend_from_slice(kind);
    png.extend_from_slice(data);
    let mut crc = Crc::new();
    crc.update(kind);
    crc.update(data);
    png.extend_from_slice(&crc.sum().to_be_bytes());
}

/// How much of each pixel of a rectangle a shape covers (0 to 1), kept as the maximum over the
/// shapes drawn so that overlapping segments of one polyline do not darken their joints. Shapes
/// are clipped to the rectangle.
pub struct Coverage {
    rect: Rect,
    cov: Vec<f32>,
}

impl Coverage {
    pub fn new(rect: Rect) -> Coverage {
        Coverage {
            rect,
            cov: vec![0.0; rect.w * rect.h],
        }
    }

    /// Covers the pixels within distance `r` (plus half a pixel of anti-aliasing) of the segment
    /// from `a` to `b`, in canvas pixel coordinates (pixel centres at +0.5).
    pub fn capsule(&mut self, a: (f64, f64), b: (f64, f64), r: f64) {
        let reach = r + 1.0;
        let rx = self.rect.x as f64;
        let ry = self.rect.y as f64;
        let x0 = ((a.0.min(b.0) - reach - rx).floor().max(0.0)) as usize;
        let y0 = ((a.1.min(b.1) - reach - ry).floor().max(0.0)) as usize;
        let x1 = (a.0.max(b.0) + reach - rx).ceil().min(self.rect.w as f64);
        let y1 = (a.1.max(b.1) + reach - ry).ceil().min(self.rect.h as f64);
        if x1 <= 0.0 || y1 <= 0.0 {
            return;
        }
        let (x1, y1) = (x1 as usize, y1 as usize);
        let (dx, dy) = (b.0 - a.0, b.1 - a.1);
        let len2 = dx * dx + dy * dy;
        for yy in y0..y1 {
            let py = ry + yy as f64 + 0.5;
            for xx in x0..x1 {
                let px = rx + xx as f64 + 0.5;
                let t = if len2 > 0.0 {
                    (((px - a.0) * dx + (py - a.1) * dy) / len2).clamp(0.0, 1.0)
                } else {
                    0.0
                };
                let (ex, ey) = (px - (a.0 + t * dx), py - (a.1 + t * dy));
                let d = (ex * ex + ey * ey).sqrt();
                let c = (r + 0.5 - d).clamp(0.0, 1.0) as f32;
                let cell = &mut self.cov[yy * self.rect.w + xx];
                if c > *cell {
                    *cell = c;
                }
            }
        }
    }

    /// A polyline of width `2 r`; a single point draws as a dot of radius `max(r, 3.5)`.
    pub fn polyline(&mut self, points: &[(f64, f64)], r: f64) {
        match points {
            [] => {}
            [p] => self.capsule(*p, *p, r.max(3.5)),
            _ => {
                for w in points.windows(2) {
                    self.capsule(w[0], w[1], r);
                }
            }
        }
    }

    /// A filled disc.
    pub fn disc(&mut self, c: (f64, f64), r: f64) {
        self.capsule(c, c, r);
    }
}

/// Width in screen pixels of `text` at `scale`.
pub fn text_width(text: &str, scale: usize) -> usize {
    font::text_width(text) * scale
}
