//! A `plotters` bitmap backend whose text is laid out and drawn here with `ab_glyph`, from a
//! subset of DejaVu Sans compiled into the binary (`assets/fonts`): no system fonts are needed.
//! plotters' own `ab_glyph` text drops each glyph's side bearing, so letters in a word sit
//! unevenly ("at iter" drawn as "atiter"); everything else goes to plotters' `BitMapBackend`.

use ab_glyph::{point, Font, FontRef, PxScale, PxScaleFont, ScaleFont};
use anyhow::{anyhow, Result};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, VPos};
use plotters_backend::{
    BackendColor, BackendCoord, BackendStyle, BackendTextStyle, DrawingErrorKind,
};

type BitMapError = <BitMapBackend<'static> as DrawingBackend>::ErrorType;
type Scaled<'f> = PxScaleFont<&'f FontRef<'static>>;
type Drawn = Result<(), DrawingErrorKind<BitMapError>>;

pub(super) struct Canvas<'a> {
    inner: BitMapBackend<'a>,
    regular: FontRef<'static>,
    bold: FontRef<'static>,
}

impl<'a> Canvas<'a> {
    /// A canvas drawing into `rgb`, `size.0` x `size.1` pixels of 3 bytes.
    pub(super) fn new(rgb: &'a mut [u8], size: (u32, u32)) -> Result<Canvas<'a>> {
        let font = |bytes: &'static [u8]| {
            FontRef::try_from_slice(bytes).map_err(|e| anyhow!("the embedded plot font: {e}"))
        };
        Ok(Canvas {
            inner: BitMapBackend::with_buffer(rgb, size),
            regular: font(include_bytes!("../../assets/fonts/DejaVuSans.ttf"))?,
            bold: font(include_bytes!("../../assets/fonts/DejaVuSans-Bold.ttf"))?,
        })
    }

    /// The font for `style`, scaled so that a line (ascent to descent) is `style.size()` pixels.
    fn font<S: BackendTextStyle>(&self, style: &S) -> Scaled<'_> {
        let font = match style.style() {
            FontStyle::Bold => &self.bold,
            _ => &self.regular,
        };
        font.as_scaled(PxScale::from(style.size() as f32))
    }

    /// Pen positions of the glyphs of `text` from 0, with kerning, and the advance after the last.
    fn layout(font: &Scaled, text: &str) -> (Vec<f32>, f32) {
        let (mut x, mut prev) = (0.0, None);
        let mut xs = Vec::with_capacity(text.len());
        for c in text.chars() {
            let id = font.glyph_id(c);
            if let Some(p) = prev {
                x += font.kern(p, id);
            }
            xs.push(x);
            x += font.h_advance(id);
            prev = Some(id);
        }
        (xs, x)
    }
}

impl DrawingBackend for Canvas<'_> {
    type ErrorType = BitMapError;

    fn get_size(&self) -> (u32, u32) {
        self.inner.get_size()
    }

    fn ensure_prepared(&mut self) -> Drawn {
        self.inner.ensure_prepared()
    }

    fn present(&mut self) -> Drawn {
        self.inner.present()
    }

    fn draw_pixel(&mut self, point: BackendCoord, color: BackendColor) -> Drawn {
        self.inner.draw_pixel(point, color)
    }

    // The bitmap backend's own lines and rectangles are faster than the generic ones.
    fn draw_line<S: BackendStyle>(&mut self, from: BackendCoord, to: BackendCoord, s: &S) -> Drawn {
        self.inner.draw_line(from, to, s)
    }

    fn draw_rect<S: BackendStyle>(
        &mut self,
        upper_left: BackendCoord,
        bottom_right: BackendCoord,
        style: &S,
        fill: bool,
    ) -> Drawn {
        self.inner.draw_rect(upper_left, bottom_right, style, fill)
    }

    fn estimate_text_size<S: BackendTextStyle>(
        &self,
        text: &str,
        style: &S,
    ) -> Result<(u32, u32), DrawingErrorKind<Self::ErrorType>> {
        let font = self.font(style);
        let width = Self::layout(&font, text).1;
        Ok((width.ceil() as u32, font.height().ceil() as u32))
    }

    fn draw_text<S: BackendTextStyle>(
        &mut self,
        text: &str,
        style: &S,
        pos: BackendCoord,
    ) -> Drawn {
        let color = style.color();
        // Outlines first: the font borrows self, the drawing needs it mutably.
        let mut coverage = Vec::new();
        {
            let font = self.font(style);
            let (xs, width) = Self::layout(&font, text);
            let x0 = pos.0 as f32
                - match style.anchor().h_pos {
                    HPos::Left => 0.0,
                    HPos::Center => width / 2.0,
                    HPos::Right => width,
                };
            let top = pos.1 as f32
                - match style.anchor().v_pos {
                    VPos::Top => 0.0,
                    VPos::Center => font.height() / 2.0,
                    VPos::Bottom => font.height(),
                };
            let baseline = (top + font.ascent()).round();
            for (c, x) in text.chars().zip(xs) {
                let mut glyph = font.scaled_glyph(c);
                glyph.position = point(x0 + x, baseline);
                if let Some(outline) = font.outline_glyph(glyph) {
                    let b = outline.px_bounds();
                    outline.draw(|x, y, v| {
                        coverage.push((b.min.x as i32 + x as i32, b.min.y as i32 + y as i32, v))
                    });
                }
            }
        }
        for (x, y, v) in coverage {
            let alpha = color.alpha * v.min(1.0) as f64;
            self.draw_pixel(
                (x, y),
                BackendColor {
                    alpha,
                    rgb: color.rgb,
                },
            )?;
        }
        Ok(())
    }
}
