/* Sequence Hub console: small behaviours on top of htmx. Every page works without this file;
   it adds tabs, following logs, bounded log windows, drag and drop, confirmations, the phone
   menu, keyboard shortcuts and relative times.
   No inline script or handler attributes anywhere: the CSP allows only files like this one. */
(function () {
  "use strict";

  document.documentElement.classList.add("js");

  var WINDOW_FOLLOWING = 2000; // lines kept per log while following
  var WINDOW_READING = 20000; // ...and while the reader scrolls back

  function $all(sel, root) { return Array.prototype.slice.call((root || document).querySelectorAll(sel)); }

  // -- tabs of the instance logs ------------------------------------------------------------
  function showPane(name) {
    $all("[data-tab]").forEach(function (tab) {
      var on = tab.getAttribute("data-tab") === name;
      tab.classList.toggle("on", on);
      if (on) tab.classList.remove("unread");
      tab.setAttribute("aria-selected", on ? "true" : "false");
    });
    $all("[data-pane]").forEach(function (pane) {
      pane.classList.toggle("on", pane.getAttribute("data-pane") === name);
    });
    var select = document.querySelector("[data-search-stream]");
    if (select) select.value = name;
    scrollLogs(true);
  }

  document.addEventListener("click", function (e) {
    var tab = e.target.closest("[data-tab]");
    if (tab) {
      e.preventDefault();
      showPane(tab.getAttribute("data-tab"));
      return;
    }
    var earlier = e.target.closest("a[data-earlier]");
    if (earlier && window.htmx) {
      e.preventDefault();
      loadEarlier(earlier);
      return;
    }
    var add = e.target.closest("[data-add-arg]");
    if (add) {
      var input = document.createElement("input");
      input.name = "arg";
      input.placeholder = "argument";
      input.setAttribute("aria-label", "argument");
      add.parentNode.insertBefore(input, add);
      input.focus();
    }
  });

  // -- following: auto-scroll that stops when the reader scrolls up --------------------------
  function followBox() { return document.querySelector("[data-follow]"); }
  function following() { var box = followBox(); return !box || box.checked; }

  function scrollLogs(force) {
    if (!force && !following()) return;
    $all(".pane.on .log, .log[data-sequencer-log]").forEach(function (log) {
      log.scrollTop = log.scrollHeight;
    });
  }

  document.addEventListener("scroll", function (e) {
    var log = e.target;
    if (!(log instanceof Element) || !log.classList.contains("log") || log.classList.contains("static")) return;
    var box = followBox();
    if (!box) return;
    var atBottom = log.scrollHeight - log.scrollTop - log.clientHeight < 24;
    if (log._programmatic) { log._programmatic = false; return; }
    box.checked = atBottom;
  }, true);

  document.addEventListener("change", function (e) {
    if (e.target.matches("[data-follow]") && e.target.checked) scrollLogs(true);
  });

  // -- bounded windows: keep the newest lines, let "load earlier" fetch the rest ----------------
  function trim(pane) {
    var lines = pane.querySelector("[id$='-lines']");
    if (!lines) return;
    var limit = following() ? WINDOW_FOLLOWING : WINDOW_READING;
    var extra = lines.children.length - limit;
    if (extra <= 0) return;
    for (var i = 0; i < extra; i++) lines.removeChild(lines.firstElementChild);
    var stream = pane.getAttribute("data-pane");
    var holder = document.getElementById("log-" + stream + "-earlier");
    var base = pane.getAttribute("data-earlier-base");
    if (holder && base && !holder.querySelector("a[data-earlier]")) {
      holder.textContent = "";
      var a = document.createElement("a");
      a.href = base;
      a.setAttribute("data-earlier", base);
      a.textContent = "▲ load earlier lines";
      holder.appendChild(a);
    }
  }

  function loadEarlier(link) {
    var pane = link.closest("[data-pane]");
    var stream = pane.getAttribute("data-pane");
    var lines = document.getElementById("log-" + stream + "-lines");
    var log = document.getElementById("log-" + stream);
    var first = lines.querySelector(".l[data-at]");
    if (!first) return;
    var before = log.scrollHeight;
    var box = followBox();
    if (box) box.checked = false; // reading back: stop jumping to the end
    htmx.ajax("GET", link.getAttribute("data-earlier") + "?at=" + encodeURIComponent(first.getAttribute("data-at")),
      { target: lines, swap: "afterbegin" }).then(function () {
        log._programmatic = true; // this scroll is ours: it must not turn following back on
        log.scrollTop += log.scrollHeight - before; // keep the line the reader was looking at
      });
  }

  // -- after each pushed message: trim, follow, mark unread tabs, follow the in-flight step ----
  document.addEventListener("htmx:wsAfterMessage", function (e) {
    // Counted for tests and curious readers: how many pushes this page has taken.
    var socket = e.target.closest("[ws-connect]");
    if (socket) socket.setAttribute("data-ws-messages", String(Number(socket.getAttribute("data-ws-messages") || 0) + 1));
    $all("[data-pane]").forEach(function (pane) {
      trim(pane);
      if (!pane.classList.contains("on")) {
        var name = pane.getAttribute("data-pane");
        if (e.detail && typeof e.detail.message === "string" && e.detail.message.indexOf("#log-" + name + "-lines") >= 0) {
          var tab = document.querySelector('[data-tab="' + name + '"]');
          if (tab) tab.classList.add("unread");
        }
      }
    });
    $all(".log").forEach(function (log) { if (following()) log._programmatic = true; });
    scrollLogs(false);
    var followStep = document.querySelector("[data-follow-step]");
    if (!followStep || followStep.checked) {
      var step = document.querySelector("ol.steps li.st-inflight");
      if (step && step.scrollIntoView) step.scrollIntoView({ block: "nearest" });
    }
  });

  // -- pushed regions keep what the user is typing -------------------------------------------
  // A region swapped in over the socket (a snapshot on connect, a state change) would otherwise
  // wipe a half-filled form inside it. Carry changed values and the focus over to the new copy;
  // a field is found again by its form's action, its name and its position.
  function fieldKey(field) {
    var form = field.closest("form");
    var scope = form || field.parentNode;
    var same = Array.prototype.slice.call(scope.querySelectorAll('[name="' + field.name + '"]'));
    return { action: form ? form.getAttribute("action") : null, name: field.name, index: same.indexOf(field) };
  }

  function findTwin(root, key) {
    var scope = root;
    if (key.action !== null) {
      scope = root.querySelector('form[action="' + key.action + '"]');
      if (!scope) return null;
    }
    return scope.querySelectorAll('[name="' + key.name + '"]')[key.index] || null;
  }

  function changed(field) {
    if (field.type === "checkbox" || field.type === "radio") return field.checked !== field.defaultChecked;
    if (field.tagName === "SELECT") {
      return Array.prototype.some.call(field.options, function (o) { return o.selected !== o.defaultSelected; });
    }
    return field.value !== field.defaultValue;
  }

  document.addEventListener("htmx:oobBeforeSwap", function (e) {
    var target = e.detail && e.detail.target;
    var fragment = e.detail && e.detail.fragment;
    if (!target || !fragment || !fragment.querySelectorAll) return;
    var active = document.activeElement;
    var refocus = null;
    $all("input, select, textarea", target).forEach(function (field) {
      if (!field.name || field.type === "hidden" || field.type === "file") return;
      var focused = field === active;
      if (!focused && !changed(field)) return;
      var twin = findTwin(fragment, fieldKey(field));
      if (!twin) return;
      if (field.type === "checkbox" || field.type === "radio") {
        if (field.checked) twin.setAttribute("checked", ""); else twin.removeAttribute("checked");
      } else if (field.tagName === "SELECT") {
        Array.prototype.forEach.call(twin.options, function (o) {
          if (o.value === field.value) o.setAttribute("selected", ""); else o.removeAttribute("selected");
        });
      } else if (field.tagName === "TEXTAREA") {
        twin.textContent = field.value;
      } else {
        twin.setAttribute("value", field.value);
      }
      if (focused) refocus = { twin: twin, start: field.selectionStart, end: field.selectionEnd };
    });
    if (refocus) {
      setTimeout(function () {
        refocus.twin.focus();
        try { refocus.twin.setSelectionRange(refocus.start, refocus.end); } catch (err) { /* not a text field */ }
      }, 0);
    }
  });

  // -- log panes: the time gutter (remembered) and the log stream's level filter ----------------
  function timesWanted() {
    try { return window.localStorage.getItem("hub-log-times") === "1"; } catch (err) { return false; }
  }
  function showTimes(on) {
    $all("[data-times]").forEach(function (box) {
      box.checked = on;
      var logs = box.closest(".logs");
      if (logs) logs.classList.toggle("show-times", on); // one class: CSS shows every gutter
    });
  }
  function filterLevel(select) {
    var pane = select.closest("[data-pane]");
    if (!pane) return;
    ["info", "warn", "error"].forEach(function (level) {
      pane.classList.toggle("min-" + level, select.value === level); // CSS hides the rows below
    });
  }
  document.addEventListener("change", function (e) {
    if (e.target.matches("[data-times]")) {
      try { window.localStorage.setItem("hub-log-times", e.target.checked ? "1" : "0"); } catch (err) { /* private mode */ }
      showTimes(e.target.checked);
    } else if (e.target.matches("[data-level-filter]")) {
      filterLevel(e.target);
    }
  });

  // -- a reconnecting page keeps its lines ----------------------------------------------------
  // On every (re)connect the socket sends each stream's last lines again. Replacing the pane with
  // them would drop what the reader loaded with "load earlier": instead only the lines after the
  // newest one shown are added; the pane's "load earlier" link stays as it is.
  function place(line) {
    var parts = (line.getAttribute("data-at") || "0:0").split(":");
    return [Number(parts[0]), Number(parts[1])];
  }
  function after(a, b) { return a[0] > b[0] || (a[0] === b[0] && a[1] > b[1]); }
  function lastLine(holder) {
    var line = holder.lastElementChild;
    while (line && !line.hasAttribute("data-at")) line = line.previousElementSibling;
    return line;
  }
  document.addEventListener("htmx:oobBeforeSwap", function (e) {
    var target = e.detail && e.detail.target;
    var fragment = e.detail && e.detail.fragment;
    if (!target || !target.id || !fragment || !fragment.querySelectorAll) return;
    var lines = /^log-(.+)-lines$/.exec(target.id);
    if (lines) {
      // A snapshot replaces the holder (hx-swap-oob="true": the fragment holds an element of
      // the holder's id); the lines that follow it are appended ("beforeend:#log-…-lines", the
      // fragment is the batch). Both are added here, as plain nodes: htmx's own swap processes
      // every added element (hundreds a batch under a flood, bench/console_mainthread.py).
      // Only a snapshot can leave a gap: a batch follows the lines before it by construction,
      // and its notes of coalesced lines (no data-at) are kept as they come.
      var whole = fragment.nodeType === 11 && fragment.firstElementChild &&
        fragment.firstElementChild.id === target.id;
      var newest = lastLine(target);
      if (whole && !newest) return; // nothing shown yet: take the snapshot as it is
      var shownTo = newest ? place(newest) : null;
      var batch = whole ? fragment.firstElementChild : fragment;
      var nodes = Array.prototype.slice.call(batch.children);
      var incoming = 0;
      var keep = nodes.filter(function (node) {
        if (!node.hasAttribute("data-at")) return !whole; // a batch's "not shown live" note
        incoming += 1;
        return !shownTo || after(place(node), shownTo);
      });
      var added = keep.filter(function (node) { return node.hasAttribute("data-at"); }).length;
      if (whole && added && added === incoming) {
        // No overlap: more was written while the page was away than one snapshot holds.
        var gap = document.createElement("div");
        gap.className = "l skipped";
        gap.textContent = "… lines written while the page was reconnecting may be missing here: search the log or download it for every line";
        target.appendChild(gap);
      }
      var add = document.createDocumentFragment();
      keep.forEach(function (node) { add.appendChild(document.importNode(node, true)); });
      target.appendChild(add);
      e.detail.shouldSwap = false;
      if (whole) target._hubMerged = true;
      return;
    }
    var earlier = /^log-(.+)-earlier$/.exec(target.id);
    if (earlier) {
      var holder = document.getElementById("log-" + earlier[1] + "-lines");
      if (holder && holder._hubMerged) {
        holder._hubMerged = false;
        e.detail.shouldSwap = false; // still right for the first line shown
      }
    }
  });

  // -- connection state shown as a dot: green live, red reconnecting ---------------------------
  function setLive(e, state) {
    var holder = e.target.closest("[data-live]") || e.target;
    holder.classList.remove("ws-open", "ws-closed");
    holder.classList.add(state);
  }
  document.addEventListener("htmx:wsOpen", function (e) { setLive(e, "ws-open"); });
  document.addEventListener("htmx:wsClose", function (e) { setLive(e, "ws-closed"); });
  document.addEventListener("htmx:wsError", function (e) { setLive(e, "ws-closed"); });

  // -- ...and as a banner: while a socket is down, actions wait for the page to be current ------
  // A button pressed on a stale page acts on a state the user no longer sees. From the drop
  // until the first message after the reconnect (the server's snapshot) the page says so and
  // its action buttons are disabled; buttons the snapshot redraws come back as the server says.
  var RETRIED = [1006, 1011, 1012, 1013]; // the codes htmx's ws extension reconnects after
  var ACTIONS = "main button, main input[type=submit]";

  function holdActions(hold) {
    if (hold) {
      $all(ACTIONS).forEach(function (button) {
        var form = button.closest("form");
        var reads = form && (form.getAttribute("method") || "get").toLowerCase() === "get" && !form.hasAttribute("hx-post");
        if (button.disabled || reads || button.closest("[data-tabs], .ws-banner")) return;
        button.disabled = true;
        button.setAttribute("data-ws-held", "");
      });
    } else {
      $all("[data-ws-held]").forEach(function (button) {
        button.disabled = false;
        button.removeAttribute("data-ws-held");
      });
    }
  }

  function updateBanner() {
    var banner = document.getElementById("ws-banner");
    if (!banner) return;
    var down = $all("[ws-connect]").filter(function (elt) { return elt._hubDown; });
    if (!down.length) {
      banner.hidden = true;
      document.body.classList.remove("ws-down");
      holdActions(false);
      return;
    }
    var gone = down.some(function (elt) { return elt._hubDown === "closed"; });
    banner.textContent = gone
      ? "The live connection was closed. Reload the page to see the current state."
      : "Reconnecting… this page may be out of date; actions are disabled until it is current again.";
    banner.hidden = false;
    document.body.classList.add("ws-down");
    holdActions(true);
  }

  document.addEventListener("htmx:wsClose", function (e) {
    var elt = e.target;
    if (elt._hubPaused) return; // a hidden tab stopped listening on purpose
    var code = e.detail && e.detail.event ? e.detail.event.code : 1006;
    elt._hubDown = RETRIED.indexOf(code) >= 0 ? "retrying" : "closed";
    updateBanner();
  });
  document.addEventListener("htmx:wsError", function (e) {
    if (e.target._hubPaused) return;
    if (!e.target._hubDown) e.target._hubDown = "retrying";
    updateBanner();
  });
  document.addEventListener("htmx:wsAfterMessage", function (e) {
    var elt = e.target.closest("[ws-connect]") || e.target;
    if (elt._hubDown) {
      elt._hubDown = false;
      updateBanner();
    }
  });

  // -- a hidden tab stops listening after a minute; coming back reconnects and heals ----------
  // (A tab left open in the background should not keep drawing a busy log for nobody.)
  var HIDDEN_PAUSE_MS = 60000;
  var pauseTimer = null;
  document.addEventListener("htmx:wsOpen", function (e) {
    e.target._hubSocket = e.detail && e.detail.socketWrapper;
  });
  document.addEventListener("visibilitychange", function () {
    if (document.hidden) {
      pauseTimer = setTimeout(function () {
        $all("[ws-connect]").forEach(function (elt) {
          var data = elt["htmx-internal-data"];
          if (data && data.webSocket && data.webSocket.socket) {
            elt._hubPaused = true;
            data.webSocket.socket.close(1000, "tab hidden"); // 1000: the extension does not retry
          }
        });
      }, HIDDEN_PAUSE_MS);
    } else {
      clearTimeout(pauseTimer);
      $all("[ws-connect]").forEach(function (elt) {
        if (elt._hubPaused && elt._hubSocket) {
          elt._hubPaused = false;
          elt._hubSocket.reconnect(); // the server's snapshot brings the page up to date
        }
      });
    }
  });

  // -- confirmations for destructive forms (plain and htmx alike) -------------------------------
  document.addEventListener("submit", function (e) {
    var form = e.target;
    var question = form.getAttribute && form.getAttribute("data-confirm");
    if (question && !window.confirm(question)) {
      e.preventDefault();
      e.stopImmediatePropagation();
    }
  }, true);

  // Clear the input box after a successful send, so the next line can be typed at once.
  document.addEventListener("htmx:afterRequest", function (e) {
    var form = e.detail && e.detail.elt;
    if (form && form.matches && form.matches("[data-clear-on-send]") && e.detail.successful) {
      var text = form.querySelector("[name=text]");
      if (text) { text.value = ""; text.focus(); }
    }
  });

  // -- drag and drop upload: fill the form's own file input, then submit it -------------------
  function initDropzones() {
    $all("[data-dropzone]").forEach(function (form) {
      var zone = form.querySelector(".drop");
      var input = form.querySelector("input[type=file]");
      if (!zone || !input || zone._ready) return;
      zone._ready = true;
      ["dragenter", "dragover"].forEach(function (name) {
        zone.addEventListener(name, function (e) { e.preventDefault(); zone.classList.add("over"); });
      });
      ["dragleave", "drop"].forEach(function (name) {
        zone.addEventListener(name, function () { zone.classList.remove("over"); });
      });
      zone.addEventListener("drop", function (e) {
        e.preventDefault();
        if (!e.dataTransfer || !e.dataTransfer.files.length) return;
        input.files = e.dataTransfer.files;
        zone.querySelector("span").textContent = "Uploading " + e.dataTransfer.files[0].name + "…";
        if (form.requestSubmit) form.requestSubmit(); else form.submit();
      });
    });
  }

  // -- start form: typing in one way of giving args selects that way -----------------------
  document.addEventListener("input", function (e) {
    var field = e.target;
    if (!field.form || !field.form.classList.contains("start")) return;
    var mode = field.name === "args_json" ? "json" : field.name === "arg" ? "fields" : null;
    var radio = mode && field.form.querySelector('input[name=args_mode][value="' + mode + '"]');
    if (radio) radio.checked = true;
  });

  // -- step lists from a JSON file: read it into the textarea so it can be checked first -------
  document.addEventListener("change", function (e) {
    var input = e.target;
    if (!input.matches || !input.matches("input[type=file][data-json-into]")) return;
    var target = document.querySelector(input.getAttribute("data-json-into"));
    if (!target || !input.files.length) return;
    var reader = new FileReader();
    reader.onload = function () { target.value = String(reader.result); };
    reader.readAsText(input.files[0]);
  });

  // -- the nav as a menu on narrow screens (the CSS shows the button there only) ----------------
  function menuToggle() { return document.querySelector("[data-menu-toggle]"); }
  function setMenu(open, focusButton) {
    var button = menuToggle();
    var menu = button && document.getElementById(button.getAttribute("aria-controls"));
    if (!menu) return;
    menu.classList.toggle("open", open);
    button.setAttribute("aria-expanded", open ? "true" : "false");
    if (open) {
      var first = menu.querySelector("a");
      if (first) first.focus();
    } else if (focusButton) {
      button.focus();
    }
  }
  function menuOpen() { var b = menuToggle(); return !!b && b.getAttribute("aria-expanded") === "true"; }

  document.addEventListener("click", function (e) {
    if (e.target.closest("[data-menu-toggle]")) { setMenu(!menuOpen(), false); return; }
    if (e.target.closest("[data-shortcuts]")) { showHelp(); return; }
    // A click outside the open menu closes it, as menus do.
    if (menuOpen() && !e.target.closest("#menu")) setMenu(false, false);
  });

  // -- keyboard shortcuts: / search, ? help, g then a letter to go somewhere -----------------------
  var GO = [
    ["o", "overview", ".brand"],
    ["s", "sequences", "/sequences/"],
    ["i", "instances", "/instances/"],
    ["q", "sequencers", "/sequencers/"],
    ["c", "components", "/components/"],
    ["t", "topics", "/topics/"],
    ["a", "audit log", "/audit/"]
  ];
  // In this order: a box a page marks as its search, then the usual suspects.
  var SEARCH_BOXES = ["[data-search]", "input[type=search]", "input[name=q]", ".filters input:not([type=hidden])", ".filters select"];
  var pendingG = 0;

  function typing(el) {
    if (!el || !el.closest) return false;
    return !!el.closest("input, textarea, select, [contenteditable]:not([contenteditable=false])");
  }

  function goTo(letter) {
    for (var i = 0; i < GO.length; i++) {
      if (GO[i][0] !== letter) continue;
      var where = GO[i][2];
      // The nav's own links, so a hub served under a path prefix goes to the right place.
      var link = where.charAt(0) === "." ? document.querySelector(where)
        : $all(".nav a, a").filter(function (a) { return a.pathname && a.pathname.slice(-where.length) === where; })[0];
      location.href = link ? link.href : where.charAt(0) === "." ? "/" : where;
      return true;
    }
    return false;
  }

  var help = null;
  function showHelp() {
    if (!help) {
      help = document.createElement("dialog");
      help.className = "keys";
      help.setAttribute("aria-label", "Keyboard shortcuts");
      var h = document.createElement("h2");
      h.textContent = "Keyboard shortcuts";
      help.appendChild(h);
      var list = document.createElement("dl");
      var rows = [["/", "search or filter this page"], ["?", "this help"], ["Esc", "close this help or the menu"]];
      GO.forEach(function (g) { rows.push(["g " + g[0], "go to " + g[1]]); });
      rows.forEach(function (row) {
        var dt = document.createElement("dt");
        row[0].split(" ").forEach(function (k) {
          var kbd = document.createElement("kbd");
          kbd.textContent = k;
          dt.appendChild(kbd);
          dt.appendChild(document.createTextNode(" "));
        });
        var dd = document.createElement("dd");
        dd.textContent = row[1];
        list.appendChild(dt);
        list.appendChild(dd);
      });
      help.appendChild(list);
      var p = document.createElement("p");
      p.className = "muted small";
      p.textContent = "Not while typing in a field.";
      help.appendChild(p);
      var close = document.createElement("button");
      close.type = "button";
      close.textContent = "Close";
      close.addEventListener("click", function () { help.close(); });
      help.appendChild(close);
      // A click on the backdrop (the dialog itself, outside its content) closes it too.
      help.addEventListener("click", function (e) { if (e.target === help) help.close(); });
      document.body.appendChild(help);
    }
    if (!help.open) help.showModal(); // Esc closes a modal dialog natively
  }

  document.addEventListener("keydown", function (e) {
    if (e.key === "Escape" && menuOpen()) { setMenu(false, true); return; }
    if (e.ctrlKey || e.metaKey || e.altKey || e.defaultPrevented || typing(e.target)) return;
    if (help && help.open) return;
    var now = Date.now();
    if (pendingG && now - pendingG < 1500) {
      pendingG = 0;
      if (goTo(e.key)) { e.preventDefault(); }
      return;
    }
    pendingG = 0;
    if (e.key === "/") {
      var box = null;
      for (var i = 0; i < SEARCH_BOXES.length && !box; i++) {
        box = $all(SEARCH_BOXES[i]).filter(function (el) { return el.offsetParent !== null && !el.disabled; })[0] || null;
      }
      if (box) { e.preventDefault(); box.focus(); if (box.select) box.select(); }
    } else if (e.key === "?") {
      e.preventDefault();
      showHelp();
    } else if (e.key === "g") {
      pendingG = now;
    }
  });

  // -- times: the server writes the absolute time with its zone; here it reads "3 min ago" -------
  // (the absolute time stays as the element's title, for hovering).
  function ago(seconds) {
    var future = seconds < 0;
    var s = Math.abs(seconds);
    var text;
    if (s < 10) return "just now";
    if (s < 60) text = Math.floor(s) + " s";
    else if (s < 3600) text = Math.floor(s / 60) + " min";
    else if (s < 86400) text = Math.floor(s / 3600) + " h";
    else if (s < 86400 * 60) text = Math.floor(s / 86400) + " d";
    else if (s < 86400 * 730) text = Math.floor(s / (86400 * 30.44)) + " mo";
    else text = Math.floor(s / (86400 * 365.25)) + " y";
    return future ? "in " + text : text + " ago";
  }

  function renderTimes(root) {
    var now = Date.now();
    $all("time[data-when]", root).forEach(function (el) {
      var at = Date.parse(el.getAttribute("datetime"));
      if (isNaN(at)) return;
      var text = ago((now - at) / 1000);
      if (el.textContent !== text) el.textContent = text;
    });
  }
  document.addEventListener("htmx:load", function (e) { renderTimes(e.target); });
  document.addEventListener("htmx:wsAfterMessage", function () { renderTimes(document); });
  setInterval(function () { if (!document.hidden) renderTimes(document); }, 5000);

  function init() {
    renderTimes(document);
    initDropzones();
    $all("[data-add-arg]").forEach(function (b) { b.hidden = false; });
    $all("[data-pane]").forEach(function (pane) {
      var link = pane.querySelector("a[data-earlier]");
      if (link) pane.setAttribute("data-earlier-base", link.getAttribute("data-earlier"));
    });
    if (timesWanted()) showTimes(true);
    $all("[data-level-filter]").forEach(filterLevel); // a value the browser kept on reload
    var hash = (location.hash || "").replace("#pane-", "");
    if (hash && document.querySelector('[data-tab="' + hash + '"]')) showPane(hash);
    scrollLogs(true);
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
