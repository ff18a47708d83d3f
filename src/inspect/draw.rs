//! `unionmount tree`, the command's side: ask the daemon for the subtree (see `map.rs` for
//! the reply's lines), parse it, and draw it as text (`render_text`, coloured on a
//! terminal) or as a self-contained HTML page (`render_html`) with the branches as stacked
//! bands under the merged view.

use std::fmt::Write as _;
use std::path::Path;

use super::map::MAX_ENTRIES;

// Client side: parse the reply, draw it
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub struct Branch {
    pub index: usize,
    pub writable: bool,
    pub name: String,
    pub path: String,
}

#[derive(Debug, Clone)]
pub struct Entry {
    pub level: usize,
    pub kind: char,
    pub flags: Vec<String>,
    pub layer: usize,
    pub from: Vec<usize>,
    pub shadows: Vec<usize>,
    pub cells: Vec<char>,
    pub name: String,
    /// Path from the root of the drawing, `/`-joined.
    pub path: String,
    /// Is it the last entry of its directory (for the tree's connectors)?
    pub last: bool,
}

impl Entry {
    pub fn has(&self, flag: &str) -> bool {
        self.flags.iter().any(|f| f == flag)
    }
    pub fn deleted(&self) -> bool {
        self.has("deleted")
    }
    pub fn is_dir(&self) -> bool {
        self.kind == 'd'
    }
}

#[derive(Debug, Clone)]
pub struct Map {
    /// What the drawing shows: the mount point, or the path inside it.
    pub title: String,
    pub branches: Vec<Branch>,
    pub entries: Vec<Entry>,
    pub truncated: bool,
}

fn layers_of(s: &str) -> Vec<usize> {
    s.split(',').filter_map(|x| x.parse().ok()).collect()
}

/// Parse a `tree` reply.
pub fn parse(title: &str, lines: &[String]) -> super::Result<Map> {
    let mut map = Map {
        title: title.to_string(),
        branches: Vec::new(),
        entries: Vec::new(),
        truncated: false,
    };
    let bad = |l: &str| format!("unexpected reply line {l:?}");
    for line in lines {
        let f: Vec<&str> = line.split('\t').collect();
        match f[0] {
            "branch" if f.len() == 5 => map.branches.push(Branch {
                index: f[1].parse().map_err(|_| bad(line))?,
                writable: f[2] == "RW",
                name: f[3].to_string(),
                path: f[4].to_string(),
            }),
            "entry" if f.len() == 9 => map.entries.push(Entry {
                level: f[1].parse().map_err(|_| bad(line))?,
                kind: f[2].chars().next().unwrap_or('f'),
                flags: f[3].split(',').map(String::from).collect(),
                layer: f[4].parse().map_err(|_| bad(line))?,
                from: layers_of(f[5]),
                shadows: layers_of(f[6]),
                cells: f[7].chars().collect(),
                name: f[8].to_string(),
                path: String::new(),
                last: false,
            }),
            "truncated" => map.truncated = true,
            _ => return Err(bad(line)),
        }
    }
    // Paths and last-child marks from the levels.
    let mut stack: Vec<String> = Vec::new();
    for e in map.entries.iter_mut() {
        stack.truncate(e.level);
        let path = match stack.last() {
            Some(p) if !p.is_empty() => format!("{p}/{}", e.name),
            _ => e.name.clone(),
        };
        e.path = path.clone();
        stack.push(path);
    }
    let n = map.entries.len();
    for i in 0..n {
        let level = map.entries[i].level;
        let next_sibling = map.entries[i + 1..]
            .iter()
            .find(|e| e.level <= level)
            .is_some_and(|e| e.level == level);
        map.entries[i].last = !next_sibling;
    }
    // Two branches with the same last component: tell them apart by index.
    let names: Vec<String> = map.branches.iter().map(|b| b.name.clone()).collect();
    for b in map.branches.iter_mut() {
        if names.iter().filter(|n| **n == b.name).count() > 1 {
            b.name = format!("{}#{}", b.name, b.index);
        }
    }
    Ok(map)
}

impl Map {
    pub fn branch(&self, i: usize) -> &str {
        self.branches.get(i).map(|b| b.name.as_str()).unwrap_or("?")
    }

    fn names(&self, v: &[usize]) -> String {
        v.iter()
            .map(|&l| self.branch(l))
            .collect::<Vec<_>>()
            .join(" + ")
    }

    /// What to say about an entry after its branch.
    pub fn note(&self, e: &Entry) -> String {
        let mut notes = Vec::new();
        if e.deleted() {
            let by = e.from.first().copied().unwrap_or(0);
            notes.push(if e.has("whiteout") {
                format!("whiteout in {}", self.branch(by))
            } else if e.has("opaque") {
                format!("under an opaque directory of {}", self.branch(by))
            } else {
                format!("hidden by {}", self.branch(by))
            });
            return notes.join("; ");
        }
        if e.has("root") {
            notes.push(format!("root, merged: {}", self.names(&e.from)));
            return notes.join("; ");
        }
        let shadows = self.names(&e.shadows);
        if e.has("copied-up") {
            notes.push(format!("copied up, shadows {shadows}"));
        } else if e.has("metacopy") {
            notes.push(format!(
                "metadata copied up, data still in {}",
                if shadows.is_empty() {
                    "a lower branch".to_string()
                } else {
                    shadows.clone()
                }
            ));
        } else if e.has("new") {
            notes.push(format!("new in {}", self.branch(e.layer)));
        }
        if e.has("merged") {
            notes.push(format!("merged: {}", self.names(&e.from)));
        }
        if e.has("moved") {
            notes.push("moved here through the mount".into());
        }
        if e.has("opaque") {
            if shadows.is_empty() {
                notes.push("opaque".into());
            } else {
                notes.push(format!("opaque: hides {shadows}"));
            }
        } else if !e.has("copied-up") && !e.has("metacopy") && !shadows.is_empty() {
            notes.push(format!("shadows {shadows}"));
        }
        notes.join("; ")
    }
}

// ---------------------------------------------------------------------------------------------
// Text
// ---------------------------------------------------------------------------------------------

/// ANSI colour of a branch: the writable upper amber, lowers from a palette.
fn ansi_branch(b: &Branch) -> &'static str {
    const LOWER: [&str; 5] = ["34", "36", "35", "32", "94"];
    if b.writable {
        "33"
    } else {
        LOWER[b.index % LOWER.len()]
    }
}

/// The tree as text; with `color`, ANSI colours and struck-through deleted entries.
pub fn render_text(map: &Map, color: bool) -> String {
    let paint = |code: &str, s: &str| {
        if color && !s.is_empty() {
            format!("\x1b[{code}m{s}\x1b[0m")
        } else {
            s.to_string()
        }
    };
    let branch_color = |i: usize| {
        map.branches
            .get(i)
            .map(ansi_branch)
            .unwrap_or("0")
            .to_string()
    };
    // Connectors and names first, to align the branch column.
    let mut rows: Vec<(String, String, &Entry)> = Vec::new();
    // more[k]: does the latest entry at level k have siblings after it?
    let mut more: Vec<bool> = Vec::new();
    for e in &map.entries {
        let mut prefix = String::new();
        if e.level > 0 {
            for k in 1..e.level {
                let m = more.get(k).copied().unwrap_or(false);
                prefix.push_str(if m { "│   " } else { "    " });
            }
            prefix.push_str(if e.last { "└── " } else { "├── " });
        }
        more.resize(e.level + 1, false);
        more[e.level] = !e.last;
        let mut name = if e.level == 0 {
            map.title.clone()
        } else {
            e.name.clone()
        };
        if e.is_dir() && e.level > 0 {
            name.push('/');
        }
        rows.push((prefix, name, e));
    }
    let width = rows
        .iter()
        .filter(|r| !r.2.deleted() && r.2.level > 0)
        .map(|r| r.0.chars().count() + r.1.chars().count())
        .max()
        .unwrap_or(0)
        .min(60);
    let bwidth = map
        .branches
        .iter()
        .map(|b| b.name.chars().count())
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    for (prefix, name, e) in &rows {
        out.push_str(prefix);
        if e.deleted() {
            let was = format!("(deleted, was in {})", map.branch(e.layer));
            out.push_str(&paint("9;31", name));
            out.push(' ');
            out.push_str(&paint("31", &was));
            out.push_str("  ");
            out.push_str(&paint("2", &map.note(e)));
            out.push('\n');
            continue;
        }
        let shown = if e.is_dir() {
            paint("1", name)
        } else {
            name.clone()
        };
        out.push_str(&shown);
        let used = prefix.chars().count() + name.chars().count();
        out.push_str(&" ".repeat(width.saturating_sub(used) + 2));
        let b = map.branch(e.layer);
        out.push_str(&paint(&branch_color(e.layer), b));
        let note = map.note(e);
        if !note.is_empty() {
            out.push_str(&" ".repeat(bwidth.saturating_sub(b.chars().count()) + 2));
            let code = if e.has("copied-up") || e.has("metacopy") {
                "1;33"
            } else if e.has("opaque") {
                "1;35"
            } else if e.has("new") {
                "32"
            } else {
                "2"
            };
            out.push_str(&paint(code, &note));
        }
        let trimmed = out.trim_end_matches(' ').len();
        out.truncate(trimmed);
        out.push('\n');
    }
    if map.truncated {
        out.push_str(&format!(
            "... (stopped after {MAX_ENTRIES} entries; give a PATH or --depth)\n"
        ));
    }
    out.push('\n');
    out.push_str("branches (top first):");
    for b in &map.branches {
        out.push_str("  ");
        out.push_str(&paint(ansi_branch(b), &b.name));
        out.push_str(&format!(
            " ({}, {}, {})",
            b.index,
            if b.writable { "RW" } else { "RO" },
            b.path
        ));
    }
    out.push('\n');
    let legend = [
        (
            "BRANCH",
            "the column after each name: the branch that serves the entry",
        ),
        (
            "copied up",
            "a lower file copied into the upper at its first change; the lower copy is shadowed",
        ),
        ("new", "created in the upper; nothing below it"),
        (
            "merged",
            "a directory present in several branches, listed as one",
        ),
        (
            "opaque",
            "a directory that hides everything of the same directory in the branches below",
        ),
        (
            "name (deleted, was in B)",
            "a lower entry hidden by a whiteout or an opaque directory",
        ),
    ];
    out.push_str("legend:\n");
    for (k, v) in legend {
        let k = if k.starts_with("name") {
            format!(
                "{} {}",
                paint("9;31", "name"),
                paint("31", "(deleted, was in B)")
            )
        } else {
            k.to_string()
        };
        let pad = 26usize.saturating_sub(if k.contains('\x1b') {
            "name (deleted, was in B)".len()
        } else {
            k.chars().count()
        });
        out.push_str(&format!("  {k}{}{v}\n", " ".repeat(pad)));
    }
    out
}

// ---------------------------------------------------------------------------------------------
// HTML
// ---------------------------------------------------------------------------------------------

fn html_escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

/// Fill colour of a branch in the page.
fn html_branch_color(b: &Branch) -> &'static str {
    const LOWER: [&str; 6] = [
        "#4a86d9", "#2fa38c", "#8e63cf", "#d06a4a", "#5b9b3c", "#c0508e",
    ];
    if b.writable {
        "#e9a41f"
    } else {
        LOWER[b.index % LOWER.len()]
    }
}

const CSS: &str = r#"
*{box-sizing:border-box}
body{font:14px/1.35 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;padding:18px 22px;background:#f7f7f4;color:#222}
h1{font-size:19px;margin:0 0 2px}
h1 code{font-size:18px}
.sub{color:#555;margin:0 0 12px}
#detail{min-height:44px;border:1px solid #ccc;border-radius:6px;background:#fff;padding:7px 10px;margin-bottom:12px;font-size:13.5px}
#detail b{font-family:ui-monospace,monospace}
.stack{display:flex;flex-direction:column;gap:6px}
.band{display:grid;grid-template-columns:120px repeat(var(--cols),minmax(78px,1fr));gap:4px;align-items:stretch;border-radius:8px;padding:6px;background:#ececea;position:relative}
.band.merged{background:#fff;border:2px solid #333;margin-bottom:8px}
.band .label{font-weight:600;padding:4px 6px;border-left:6px solid var(--c);display:flex;flex-direction:column;justify-content:center}
.band .label small{font-weight:400;color:#555;font-size:11.5px;overflow-wrap:anywhere}
.tile{min-width:0;border-radius:5px;padding:4px 5px;font:12px/1.25 ui-monospace,"DejaVu Sans Mono",monospace;overflow-wrap:anywhere;border:1px solid transparent;cursor:pointer;position:relative}
.tile .dir{display:block;color:#666;font-size:10.5px}
.tile .nm{font-weight:600}
.tile .tag{display:block;font:10.5px/1.2 system-ui,sans-serif;margin-top:2px}
.tile.empty{border:1px dashed #d4d4d0;cursor:default}
.merged .tile{background:color-mix(in srgb,var(--c) 22%,#fff);border-color:var(--c);border-left-width:5px}
.merged .tile.deleted{background:#fff;border:1px dashed #c33;color:#a22}
.merged .tile.deleted .nm{text-decoration:line-through}
.layer .tile.serves{background:var(--c);color:#fff;border-color:var(--c)}
.layer .tile.serves .dir{color:#f4f4f4}
.layer .tile.merges{background:color-mix(in srgb,var(--c) 55%,#fff);border-color:var(--c)}
.layer .tile.shadowed{background:repeating-linear-gradient(135deg,#fff 0 5px,color-mix(in srgb,var(--c) 30%,#fff) 5px 10px);border:1px solid var(--c);color:#555}
.layer .tile.hidden{background:#fff;border:1px dashed #c33;color:#a22}
.layer .tile.hidden .nm{text-decoration:line-through}
.layer .tile.whiteout{background:#333;color:#fff}
.tile.opq .tag{font-weight:700}
.tile.hl{outline:3px solid #111;outline-offset:1px;z-index:1}
.tile.sel{outline:3px solid #d22;outline-offset:1px;z-index:2}
.legend{margin-top:14px;display:flex;flex-wrap:wrap;gap:8px 18px;font-size:12.5px;color:#333}
.legend span.sw{display:inline-block;width:26px;height:14px;vertical-align:-2px;margin-right:5px;border-radius:3px}
.legend .tile{display:inline-block;cursor:default;padding:1px 5px}
.note{color:#777;font-size:12px;margin-top:8px}
"#;

const JS: &str = r#"
(function(){
  var detail=document.getElementById('detail');
  var pinned=null;
  function col(i){return document.querySelectorAll('.tile[data-col="'+i+'"]');}
  function show(t){
    document.querySelectorAll('.tile.hl').forEach(function(x){x.classList.remove('hl');});
    if(!t){detail.innerHTML=detail.dataset.idle;return;}
    col(t.dataset.col).forEach(function(x){x.classList.add('hl');});
    var m=document.querySelector('.merged .tile[data-col="'+t.dataset.col+'"]');
    detail.innerHTML=m.dataset.info;
  }
  function select(t){
    document.querySelectorAll('.tile.sel').forEach(function(x){x.classList.remove('sel');});
    pinned=t;
    if(t){col(t.dataset.col).forEach(function(x){x.classList.add('sel');});}
    show(t);
  }
  detail.dataset.idle=detail.innerHTML;
  document.querySelectorAll('.tile[data-col]').forEach(function(t){
    t.addEventListener('mouseenter',function(){show(t);});
    t.addEventListener('mouseleave',function(){show(pinned);});
    t.addEventListener('click',function(){select(pinned===t?null:t);});
  });
  var h=decodeURIComponent(location.hash.slice(1));
  if(h.indexOf('select=')===0){
    var p=h.slice(7);
    var t=Array.prototype.find.call(document.querySelectorAll('.merged .tile[data-path]'),function(x){return x.dataset.path===p;});
    if(t)select(t);
  }
  document.body.dataset.ready='1';
})();
"#;

/// The map as one self-contained HTML page: inline CSS and script, nothing fetched.
pub fn render_html(map: &Map) -> String {
    // The root is the title, not a column.
    let cols: Vec<&Entry> = map.entries.iter().filter(|e| e.level > 0).collect();
    let mut h = String::new();
    let title = html_escape(&map.title);
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width\">\
         <title>unionmount tree {title}</title><style>{CSS}"
    );
    for b in &map.branches {
        let _ = writeln!(h, ".b{}{{--c:{}}}", b.index, html_branch_color(b));
    }
    let _ = write!(
        h,
        "</style></head>\n<body>\n<h1>unionmount tree <code>{title}</code></h1>\n\
         <p class=\"sub\">Top: what the user sees in the merged tree. Below it, one band per \
         branch, top first: what each really holds at the same place. Hover over an entry, or \
         click it to keep it selected.</p>\n\
         <div id=\"detail\">Hover over an entry to see which branch serves it and which lower \
         copies it shadows.</div>\n<div class=\"stack\" style=\"--cols:{};min-width:{}px\">\n",
        cols.len().max(1),
        120 + 82 * cols.len().max(1) + 16
    );
    // The merged band.
    let root_from = map
        .entries
        .first()
        .map(|e| map.names(&e.from))
        .unwrap_or_default();
    let _ = writeln!(
        h,
        "<div class=\"band merged\" data-band=\"merged\"><div class=\"label\" style=\"--c:#333\">\
         merged<small>what you see ({})</small></div>",
        html_escape(&root_from)
    );
    for (i, e) in cols.iter().enumerate() {
        let (dir, name) = match e.path.rsplit_once('/') {
            Some((d, n)) => (format!("{d}/"), n.to_string()),
            None => (String::new(), e.path.clone()),
        };
        let slash = if e.is_dir() { "/" } else { "" };
        let note = map.note(e);
        let (class, tag, info) = if e.deleted() {
            (
                "tile deleted".to_string(),
                format!("(deleted, was in {})", map.branch(e.layer)),
                format!(
                    "<b>{}{slash}</b>: deleted, was in <b>{}</b> ({}). The merged tree does \
                     not show it; the copy in {} is untouched.",
                    html_escape(&e.path),
                    html_escape(map.branch(e.layer)),
                    html_escape(&note),
                    html_escape(map.branch(e.layer)),
                ),
            )
        } else {
            let mut class = String::from("tile");
            for f in &e.flags {
                class.push(' ');
                class.push_str(f);
            }
            let shadows = if e.shadows.is_empty() {
                "shadows no lower copy".to_string()
            } else {
                format!(
                    "shadows the lower {} in {}",
                    if e.shadows.len() > 1 {
                        "copies"
                    } else {
                        "copy"
                    },
                    map.names(&e.shadows)
                )
            };
            (
                class,
                note.clone(),
                format!(
                    "<b>{}{slash}</b>: served by <b>{}</b>{}{}.",
                    html_escape(&e.path),
                    html_escape(map.branch(e.layer)),
                    if note.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", html_escape(&note))
                    },
                    if note.contains("shadows") || note.contains("hides") {
                        String::new()
                    } else {
                        format!("; {}", html_escape(&shadows))
                    }
                ),
            )
        };
        let _ = writeln!(
            h,
            "<div class=\"{class} b{}\" data-col=\"{i}\" data-path=\"{}\" data-kind=\"{}\" \
             data-branch=\"{}\" data-flags=\"{}\" data-shadows=\"{}\" data-info=\"{}\" \
             title=\"{}\"><span class=\"dir\">{}</span><span class=\"nm\">{}{slash}</span>\
             <span class=\"tag\">{}</span></div>",
            e.layer,
            html_escape(&e.path),
            e.kind,
            html_escape(map.branch(e.layer)),
            html_escape(&e.flags.join(" ")),
            html_escape(&map.names(&e.shadows)),
            html_escape(&info),
            html_escape(&format!("{}{slash} {}", e.path, tag)),
            html_escape(&dir),
            html_escape(&name),
            html_escape(&tag),
        );
    }
    h.push_str("</div>\n");
    // One band per branch.
    for b in &map.branches {
        let _ = writeln!(
            h,
            "<div class=\"band layer b{}\" data-band=\"{}\" data-layer=\"{}\"><div class=\"label\">\
             {}<small>{} {} · {}</small></div>",
            b.index,
            html_escape(&b.name),
            b.index,
            html_escape(&b.name),
            b.index,
            if b.writable { "RW" } else { "RO" },
            html_escape(&b.path)
        );
        for (i, e) in cols.iter().enumerate() {
            let c = e.cells.get(b.index).copied().unwrap_or('-');
            if c == '-' {
                let _ = writeln!(h, "<div class=\"tile empty\"></div>");
                continue;
            }
            let (dir, name) = match e.path.rsplit_once('/') {
                Some((d, n)) => (format!("{d}/"), n.to_string()),
                None => (String::new(), e.path.clone()),
            };
            let role = if c == 'w' {
                "whiteout"
            } else if e.deleted() {
                "hidden"
            } else if b.index == e.layer {
                "serves"
            } else if e.is_dir() && e.from.contains(&b.index) {
                "merges"
            } else if e.shadows.contains(&b.index) {
                "shadowed"
            } else {
                "hidden"
            };
            let (shown, tag) = match c {
                'w' => (
                    format!(".wh.{name}"),
                    "whiteout: deletes what is below".to_string(),
                ),
                'o' => (format!("{name}/"), "opaque directory".to_string()),
                'd' => (format!("{name}/"), role_tag(role)),
                _ => (name.clone(), role_tag(role)),
            };
            let _ = writeln!(
                h,
                "<div class=\"tile {role}{}\" data-col=\"{i}\" data-cell=\"{c}\" \
                 title=\"{}\"><span class=\"dir\">{}</span><span class=\"nm\">{}</span>\
                 <span class=\"tag\">{}</span></div>",
                if c == 'o' { " opq" } else { "" },
                html_escape(&format!("{}/{}: {}", b.path, e.path, tag)),
                html_escape(&dir),
                html_escape(&shown),
                html_escape(&tag)
            );
        }
        h.push_str("</div>\n");
    }
    h.push_str("</div>\n<div class=\"legend\">");
    for b in &map.branches {
        let _ = write!(
            h,
            "<div><span class=\"sw b{}\" style=\"background:var(--c)\"></span>{} ({})</div>",
            b.index,
            html_escape(&b.name),
            if b.writable { "RW" } else { "RO" }
        );
    }
    h.push_str(
        "<div><span class=\"tile\" style=\"background:#999;color:#fff\">x</span> serves the \
         merged entry</div>\
         <div><span class=\"tile\" style=\"background:repeating-linear-gradient(135deg,#fff 0 \
         5px,#ccc 5px 10px)\">x</span> shadowed lower copy</div>\
         <div><span class=\"tile\" style=\"background:#333;color:#fff\">.wh.x</span> whiteout\
         </div>\
         <div><span class=\"tile\" style=\"border:1px dashed #c33;color:#a22\"><s>x</s></span> \
         deleted: a lower entry hidden by a whiteout or an opaque directory</div>\
         <div><b>copied up</b>: a lower file copied into the upper at its first change</div>\
         <div><b>opaque</b>: a directory hiding the same directory below it</div>\
         </div>\n",
    );
    if map.truncated {
        let _ = writeln!(
            h,
            "<p class=\"note\">Stopped after {MAX_ENTRIES} entries: draw a PATH inside the \
             mount, or use --depth.</p>"
        );
    }
    let _ = write!(h, "<script>{JS}</script>\n</body></html>\n");
    h
}

fn role_tag(role: &str) -> String {
    match role {
        "serves" => "serves it",
        "merges" => "merged in",
        "shadowed" => "shadowed",
        _ => "hidden",
    }
    .to_string()
}

// ---------------------------------------------------------------------------------------------
// The command
// ---------------------------------------------------------------------------------------------

/// When to colour the text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Color {
    Auto,
    Always,
    Never,
}

/// `unionmount tree MOUNTPOINT [PATH] [--depth N] [--html FILE]`.
pub fn run(
    target: &Path,
    path: Option<&Path>,
    depth: Option<usize>,
    html: Option<&Path>,
    color: Color,
) -> super::Result<()> {
    use std::io::{IsTerminal, Write};
    let (mp, mut rel) = super::find_mount(target)?;
    if let Some(p) = path {
        if p.is_absolute() {
            let abs = super::absolute(p)?;
            rel = abs
                .strip_prefix(&mp)
                .map_err(|_| format!("{}: not inside the mount {}", p.display(), mp.display()))?
                .to_path_buf();
        } else {
            rel.push(p);
        }
    }
    let rel = super::clean_relative(&rel)?;
    let depth_arg = depth.map_or("-".to_string(), |d| d.to_string());
    let lines =
        super::control::request_lines(&mp, &format!("tree {depth_arg} {}", rel.to_string_lossy()))?;
    let title = if rel.as_os_str().is_empty() {
        mp.display().to_string()
    } else {
        mp.join(&rel).display().to_string()
    };
    let map = parse(&title, &lines)?;
    if let Some(file) = html {
        let page = render_html(&map);
        if file == Path::new("-") {
            std::io::stdout()
                .write_all(page.as_bytes())
                .map_err(|e| format!("stdout: {e}"))?;
        } else {
            std::fs::write(file, page).map_err(|e| format!("{}: {e}", file.display()))?;
            eprintln!(
                "wrote {} ({} entries, {} branches)",
                file.display(),
                map.entries.len().saturating_sub(1),
                map.branches.len()
            );
        }
        return Ok(());
    }
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    let color = match color {
        Color::Always => true,
        Color::Never => false,
        Color::Auto => !no_color && std::io::stdout().is_terminal(),
    };
    let text = render_text(&map, color);
    let mut o = std::io::stdout().lock();
    let _ = o.write_all(text.as_bytes()).and_then(|_| o.flush());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Map {
        let lines: Vec<String> = [
            "branch\t0\tRW\tupper\t/u",
            "branch\t1\tRO\tbase\t/b",
            "entry\t0\td\troot\t0\t0,1\t\tdd\t",
            "entry\t1\tf\tcopied-up\t0\t0\t1\tff\t1",
            "entry\t1\td\tmerged\t0\t0,1\t\tdd\tapp",
            "entry\t2\tf\tdeleted,whiteout\t1\t0\t\twf\thello.txt",
            "entry\t1\tf\tnew\t0\t0\t\tf-\td",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        parse("/mnt", &lines).unwrap()
    }

    #[test]
    fn text_draws_branches_flags_and_deletions() {
        let t = render_text(&sample(), false);
        let want = "\
/mnt      upper  root, merged: upper + base
├── 1     upper  copied up, shadows base
├── app/  upper  merged: upper + base
│   └── hello.txt (deleted, was in base)  whiteout in upper
└── d     upper  new in upper
";
        assert!(t.starts_with(want), "{t}");
        assert!(t.contains("legend:"), "{t}");
        assert!(!t.contains('\x1b'));
        let c = render_text(&sample(), true);
        assert!(c.contains("\x1b[9;31mhello.txt\x1b[0m"), "{c}");
    }

    #[test]
    fn html_is_self_contained() {
        let h = render_html(&sample());
        assert!(!h.contains("http://") && !h.contains("https://"));
        assert!(h.contains("data-path=\"app/hello.txt\""));
        assert!(h.contains("class=\"tile deleted b1\""));
        assert_eq!(h.matches("class=\"band layer").count(), 2);
    }
}
