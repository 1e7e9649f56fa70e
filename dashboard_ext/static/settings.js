// The settings page: one channel's credentials, mapping and options at a time; exceptions; operations log.
(function () {
  "use strict";
  var B = window.KlarnaBridge, h = B.h;
  var form = document.getElementById("settings-form");
  var state = { data: null, channel: "*", canConfigure: false };
  var STATE_PILLS = { succeeded: "success", pending: "warning", failed: "error" };

  function $(id) { return document.getElementById(id); }
  function field(name) { return form.elements.namedItem(name); }

  function showStatus(kind, title, text) {
    var box = $("status");
    box.className = "callout " + (kind || "");
    box.replaceChildren(h("span", { class: "icon" }), h("div", null, h("strong", null, title), text ? h("p", null, text) : null));
    box.hidden = false;
  }

  function failed(error) {
    state.unauthorized = error.status === 401;
    var titles = { 400: "The request was incomplete", 401: "Not signed in", 403: "Not allowed" };
    var hint = error.status === 401 ? " Reload the page from the Saleor dashboard." : "";
    showStatus("critical", titles[error.status] || "Something went wrong", error.message + hint);
  }

  if (!B.embedded) {
    showStatus("warning", "Open this page from the Saleor dashboard", "Apps → Klarna Order Management. It needs the sign-in token the dashboard hands over.");
  }
  function start() {
    state.unauthorized = false;
    Promise.all([loadSettings(), loadExceptions(), loadOperations()])
      .then(function () { $("status").hidden = true; })
      .catch(failed);
  }
  B.ready().then(start);
  // The Dashboard refreshes its 5-minute token; a page refused with an old one loads with the new one.
  B.onRefresh(function () { if (state.unauthorized) start(); });

  // -- settings ---------------------------------------------------------------------------------

  function channels() { return state.data ? state.data.channels : []; }
  function current() {
    return channels().find(function (c) { return c.slug === state.channel; }) || channels()[0];
  }

  function loadSettings() {
    return B.api("GET", "/settings").then(function (data) {
      state.data = data;
      state.canConfigure = data.can_configure;
      if (!channels().some(function (c) { return c.slug === state.channel; })) state.channel = "*";
      renderChannelSelect();
      showChannel();
      renderUnpaidCallout(data.fulfillment_allow_unpaid);
      renderPaymentsCallout(data.handles_payments);
      if (!data.can_configure) {
        Array.prototype.forEach.call(form.elements, function (el) { if (el.id !== "channel-select") el.disabled = true; });
        $("save-button").disabled = $("discard-button").disabled = $("test-button").disabled = true;
        setSaveStatus("Read only: changing settings needs the Manage apps permission, on the app's own page.");
      }
      form.hidden = false;
      $("savebar").hidden = false;
    });
  }

  function channelLabel(c) {
    if (c.slug === "*") return "All channels";
    var label = c.name + (c.currency ? " · " + c.currency : "");
    if (!c.own_settings) label += " (uses the settings for all channels)";
    if (c.in_saleor === false) label += " (no longer in Saleor)";
    return label;
  }

  function renderChannelSelect() {
    var select = $("channel-select");
    select.replaceChildren.apply(select, channels().map(function (c) {
      return h("option", { value: c.slug, selected: c.slug === state.channel }, channelLabel(c));
    }));
  }

  function showChannel() {
    var c = current();
    var s = c.settings;
    state.channel = c.slug;
    $("channel-select").value = c.slug;
    $("channel-chip").textContent = c.slug === "*" ? "All channels" : c.name;
    var help = c.slug === "*" ? "Every channel without settings of its own uses these."
      : c.own_settings ? "This channel has its own settings."
      : "This channel uses the settings for all channels, shown here. Saving gives it its own, starting from these.";
    if (state.data.saleor_error) help += " Saleor's channel list is unavailable (" + state.data.saleor_error + ").";
    $("channel-help").textContent = help;
    $("inherit-button").hidden = c.slug === "*" || !c.own_settings || !state.canConfigure;
    $("defaults-button").hidden = !state.canConfigure;

    field("region").value = s.region;
    field("environment").value = s.environment;
    field("username").value = s.username;
    field("password").value = "";
    field("password").placeholder = s.password_set ? "•••••••• stored; type to replace" : "";
    showPasswordState(s.password_set ? "set" : "unset");
    showMappingAndOptions(s.mapping, s.options);
    var key = field("options.klarna_id_metadata_key");
    key.value = s.options.klarna_id_metadata_key;
    // The worker reads the key before it knows the order's channel, so only "*" sets it.
    key.disabled = c.slug !== "*" || !state.canConfigure;
    $("metadata-help").textContent = c.slug === "*"
      ? "Used when the order has no Klarna transaction; the app reads the order's metadata and private metadata."
      : "Set under All channels: the app reads it before it knows the order's channel.";
    $("test-result").textContent = "";
    clearErrors();
    setDirty(false);
  }

  // The password's badge: stored, missing, or typed and accepted by Klarna but not saved yet.
  var PASSWORD_STATES = {
    set: ["pill-success", "Set", "Leave empty to keep the stored password."],
    unset: ["pill-warning", "Not set", "Needed before the app can call Klarna."],
    tested: ["pill-info", "Tested, not saved", "Klarna accepted this password. Save to keep it."],
  };
  function showPasswordState(name) {
    var look = PASSWORD_STATES[name];
    var pill = $("password-state");
    pill.className = "pill " + look[0];
    pill.textContent = look[1];
    $("password-help").textContent = look[2];
  }

  var FLAGS = ["send_tracking", "write_notes", "refund_shipping_on_full_return", "extend_authorization", "update_authorization", "release_leftovers"];
  var NUMBERS = ["extension_margin_days", "final_expiry_warning_days", "recheck_hours", "fraud_recheck_minutes"];
  function showMappingAndOptions(mapping, options) {
    state.data.statuses.forEach(function (status) { field("mapping." + status).value = mapping[status] || "none"; });
    Array.prototype.forEach.call(form.querySelectorAll('input[name="options.shipping_with"]'), function (radio) {
      radio.checked = radio.value === options.shipping_with;
    });
    FLAGS.forEach(function (name) { field("options." + name).checked = !!options[name]; });
    NUMBERS.forEach(function (name) { field("options." + name).value = options[name] == null ? "" : options[name]; });
    Array.prototype.forEach.call(form.querySelectorAll('input[name="options.cancelled_shipment"]'), function (radio) {
      radio.checked = radio.value === options.cancelled_shipment;
    });
  }

  function renderUnpaidCallout(allowUnpaid) {
    var box = $("unpaid-callout");
    box.classList.toggle("warning", allowUnpaid === false);
    box.classList.toggle("success", allowUnpaid === true);
    if (allowUnpaid === false) {
      $("unpaid-text").textContent = "This shop does not allow fulfillment of unpaid orders, so Saleor will refuse to ship " +
        "authorized Klarna orders and nothing gets captured. Turn on “Allow fulfillment of unpaid orders” (shop setting fulfillmentAllowUnpaid).";
    } else if (allowUnpaid === true) {
      $("unpaid-text").textContent = "This shop allows fulfillment of unpaid orders (fulfillmentAllowUnpaid), as capture on shipment needs.";
    }
  }

  function renderPaymentsCallout(handles) {
    var box = $("payments-callout");
    box.hidden = handles === null || handles === undefined;
    box.classList.toggle("warning", handles === false);
    box.classList.toggle("success", handles === true);
    $("payments-text").textContent = handles
      ? "The app keeps Saleor's books: each capture, refund and cancel is reported on its Klarna transaction, and the order's Capture, Refund and Cancel buttons reach Klarna."
      : "This installation lacks the Handle payments permission: the app captures, refunds and cancels in Klarna and writes notes as before, but Saleor still shows the order unpaid and its buttons do not reach Klarna. Reinstall the app (or accept the new permission in Saleor) to have Saleor's books follow Klarna.";
  }

  function collect() {
    var doc = { region: field("region").value, environment: field("environment").value, username: field("username").value.trim(), mapping: {}, options: {} };
    if (field("password").value) doc.password = field("password").value;
    state.data.statuses.forEach(function (status) { doc.mapping[status] = field("mapping." + status).value; });
    var shipping = form.querySelector('input[name="options.shipping_with"]:checked');
    if (shipping) doc.options.shipping_with = shipping.value;
    FLAGS.forEach(function (name) { doc.options[name] = field("options." + name).checked; });
    // A number the browser cannot read is sent as typed, so the server names the field in its error.
    NUMBERS.forEach(function (name) {
      var raw = field("options." + name).value.trim();
      doc.options[name] = /^\d+$/.test(raw) ? parseInt(raw, 10) : raw;
    });
    var cancelled = form.querySelector('input[name="options.cancelled_shipment"]:checked');
    if (cancelled) doc.options.cancelled_shipment = cancelled.value;
    if (state.channel === "*") doc.options.klarna_id_metadata_key = field("options.klarna_id_metadata_key").value.trim();
    return doc;
  }

  function clearErrors() {
    Array.prototype.forEach.call(document.querySelectorAll("[data-error-for]"), function (el) { el.hidden = true; el.textContent = ""; });
    Array.prototype.forEach.call(document.querySelectorAll(".invalid"), function (el) { el.classList.remove("invalid"); });
  }

  function showErrors(errors) {
    var unplaced = [];
    Object.keys(errors).forEach(function (key) {
      var slot = document.querySelector('[data-error-for="' + CSS.escape(key) + '"]');
      var input = field(key);
      if (!slot) { unplaced.push((key ? key + ": " : "") + errors[key]); return; }
      slot.textContent = errors[key];
      slot.hidden = false;
      if (input && input.classList) input.classList.add("invalid");
      else if (slot.closest(".field")) slot.closest(".field").classList.add("invalid");
    });
    return unplaced;
  }

  function setSaveStatus(text) { $("save-status").textContent = text; }
  // Save and Discard are live only when there is something to save or discard.
  function setDirty(dirty) {
    state.dirty = dirty;
    if (!state.canConfigure) return;
    $("save-button").disabled = $("discard-button").disabled = !dirty;
    setSaveStatus(dirty ? "Unsaved changes" : "");
  }

  form.addEventListener("input", function (event) { if (event.target.id !== "channel-select") setDirty(true); });
  form.addEventListener("change", function (event) { if (event.target.id !== "channel-select") setDirty(true); });

  $("channel-select").addEventListener("change", function (event) {
    var discarded = state.dirty;
    state.channel = event.target.value;
    showChannel();
    // The sandboxed iframe may not open confirm() dialogs: say what happened instead.
    if (discarded) setSaveStatus("Unsaved changes of the previous channel were discarded.");
  });
  $("discard-button").addEventListener("click", showChannel);
  $("defaults-button").addEventListener("click", function () {
    var keep = field("options.klarna_id_metadata_key").value;
    showMappingAndOptions(state.data.defaults.mapping, state.data.defaults.options);
    field("options.klarna_id_metadata_key").value = keep;  // not a default to reset: where the shop keeps its ids
    setDirty(true);
    setSaveStatus("Status mapping and options reset to the defaults: Save to keep them.");
  });

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    if (!state.canConfigure) return;
    clearErrors();
    $("save-button").disabled = true;
    setSaveStatus("Saving…");
    B.api("PUT", "/settings/" + encodeURIComponent(state.channel), collect())
      .then(function (result) {
        var c = current();
        c.settings = result.settings;
        c.own_settings = true;
        renderChannelSelect();
        showChannel();
        setSaveStatus("Saved.");
        B.notify("success", "Klarna settings saved");
      })
      .catch(function (error) {
        if (error.status === 400 && error.data.errors) {
          var rest = showErrors(error.data.errors);
          setSaveStatus("Not saved: " + (rest.length ? rest.join("; ") : "check the highlighted fields."));
        } else {
          setSaveStatus("Not saved: " + error.message);
        }
      })
      .then(function () { $("save-button").disabled = !state.dirty; });
  });

  $("inherit-button").addEventListener("click", function () {
    B.api("DELETE", "/settings/" + encodeURIComponent(state.channel))
      .then(loadSettings)
      .then(function () { setSaveStatus("This channel uses the settings for all channels again."); })
      .catch(function (error) { setSaveStatus(error.message); });
  });

  $("test-button").addEventListener("click", function () {
    var out = $("test-result");
    var doc = collect();
    clearErrors();
    out.className = "result";
    out.textContent = "Asking Klarna…";
    $("test-button").disabled = true;
    B.api("POST", "/test-connection", { channel: state.channel, region: doc.region, environment: doc.environment, username: doc.username, password: doc.password })
      .then(function (result) {
        out.className = "result " + (result.ok ? "ok" : "bad");
        out.textContent = result.message;
        if (result.ok && doc.password) showPasswordState("tested");
        if (result.result === "wrong_region") out.textContent += " Choose " + result.region + " / " + result.environment + " above.";
      })
      .catch(function (error) {
        out.className = "result bad";
        out.textContent = error.status === 400 && error.data.errors ? showErrors(error.data.errors).join("; ") || "Check the highlighted fields." : error.message;
      })
      .then(function () { $("test-button").disabled = false; });
  });

  // -- exceptions -------------------------------------------------------------------------------

  function renderCount(count) {
    var badge = $("exceptions-badge");
    badge.hidden = false;
    badge.className = "pill " + (count ? "pill-error" : "pill-success");
    badge.textContent = count ? count + (count === 1 ? " open exception" : " open exceptions") : "No open exceptions";
    var pill = $("exceptions-count");
    pill.className = "pill " + (count ? "pill-error" : "pill-neutral");
    pill.textContent = String(count);
  }

  // Saleor's order number (#37) links to the order page, as the Dashboard's own lists do; the id only
  // when Saleor did not give the number (order deleted, Saleor not answering).
  function orderLink(orderId, number) {
    var label = number ? "#" + number : orderId;
    return h("button", { type: "button", class: number ? "link order-number" : "link", title: "Open order " + label + " in the dashboard",
      onclick: function () { B.redirect("/orders/" + encodeURIComponent(orderId)); } }, label);
  }

  // Say each thing once: the code is in the pill, so not again at the start of the message.
  function withoutCode(message, code) {
    if (!code || !message) return message || "";
    return message.indexOf(code) === 0 ? message.slice(code.length).replace(/^[\s:·-]+/, "") : message;
  }

  function logDetails(label, value) {
    return h("details", { class: "log" }, h("summary", null, label), h("pre", null, JSON.stringify(value, null, 2)));
  }

  function loadExceptions() {
    return B.api("GET", "/exceptions").then(function (data) {
      renderCount(data.open_count);
      $("exceptions").hidden = false;
      var body = $("exceptions-body");
      if (!data.exceptions.length) {
        body.replaceChildren(h("div", { class: "empty" }, "No open exceptions. Klarna operations that fail for good show up here."));
        return;
      }
      body.replaceChildren(h("div", { class: "table-wrap" }, h("table", null,
        h("thead", null, h("tr", null, h("th", null, "Order"), h("th", null, "Problem"), h("th", { class: "end" }, "Actions"))),
        h("tbody", null, data.exceptions.map(exceptionRow)))));
    });
  }

  function exceptionRow(exc) {
    return h("tr", { "data-exception": exc.id },
      h("td", { class: "nowrap" }, orderLink(exc.order_id, exc.order_number), h("span", { class: "sub" }, B.when(exc.created_at))),
      h("td", null,
        h("span", { class: "pill pill-error" }, exc.error_code || "ERROR"), " ", withoutCode(exc.message, exc.error_code),
        exc.correlation_id && (exc.message || "").indexOf(exc.correlation_id) === -1
          ? h("span", { class: "sub mono ids", title: exc.correlation_id }, "correlation id " + exc.correlation_id) : null,
        exc.log && exc.log.length ? logDetails("Klarna request and response", exc.log) : null),
      h("td", { class: "end" }, h("div", { class: "inline" },
        h("button", { type: "button", class: "btn btn-secondary btn-sm", onclick: function (e) { resolve(exc.id, "retry", e.target); } }, "Retry"),
        h("button", { type: "button", class: "btn btn-tertiary btn-sm", onclick: function (e) { resolve(exc.id, "dismiss", e.target); } }, "Dismiss"))));
  }

  function resolve(id, action, button) {
    button.disabled = true;
    B.api("POST", "/exceptions/" + id + "/" + action)
      .then(function (result) { B.notify("success", result.message); return Promise.all([loadExceptions(), loadOperations()]); })
      .catch(function (error) { button.disabled = false; showStatus("critical", "Could not " + action, error.message); });
  }

  // -- operations log ---------------------------------------------------------------------------

  function loadOperations() {
    var filter = $("operations-filter").value;
    return B.api("GET", "/operations" + (filter ? "?state=" + encodeURIComponent(filter) : "")).then(function (data) {
      $("operations").hidden = false;
      var body = $("operations-body");
      if (!data.operations.length) {
        body.replaceChildren(h("div", { class: "empty" }, filter ? "No " + filter + " operations." : "No Klarna operations yet. They appear when orders change status."));
        return;
      }
      body.replaceChildren(h("div", { class: "table-wrap" }, h("table", null,
        h("thead", null, h("tr", null, h("th", null, "Order"), h("th", null, "State"), h("th", null, "Operation"), h("th", null, "When"))),
        h("tbody", null, data.operations.map(operationRow)))));
    });
  }

  // Two rows per operation: the facts, then its request and response, folded, across the full width.
  function operationRow(op) {
    var kinds = { capture: "Capture", refund: "Refund", cancel: "Cancel", release: "Release remaining authorization" };
    return [
      h("tr", { "data-operation": op.id, class: "has-log" },
        h("td", null, orderLink(op.order_id, op.order_number), h("span", { class: "sub mono ids", title: "Klarna order " + op.klarna_order_id }, "Klarna " + op.klarna_order_id)),
        h("td", null, h("span", { class: "pill pill-" + (STATE_PILLS[op.state] || "neutral") }, op.state),
          op.error_code ? h("span", { class: "sub" }, op.error_code) : null),
        h("td", null, (kinds[op.kind] || op.kind) + " ", h("span", { class: "num" }, op.amount_display),
          h("span", { class: "sub mono ids", title: op.klarna_resource_id || "" }, op.klarna_resource_id ? op.kind + " id " + op.klarna_resource_id : ""),
          op.correlation_id ? h("span", { class: "sub mono ids", title: op.correlation_id }, "correlation id " + op.correlation_id) : null),
        h("td", { class: "nowrap" }, B.when(op.created_at), h("span", { class: "sub" }, op.attempts + (op.attempts === 1 ? " attempt" : " attempts")))),
      h("tr", { class: "log-row" }, h("td", { colspan: 4 },
        logDetails("Request and response", { request_body: op.request_body, exchanges: op.log }))),
    ];
  }

  $("operations-filter").addEventListener("change", function () { loadOperations().catch(failed); });
  $("operations-refresh").addEventListener("click", function () { Promise.all([loadOperations(), loadExceptions()]).catch(failed); });
})();
