// Copy-to-clipboard buttons: <button data-copy-target="element-id" hidden>. The button stays hidden
// without JavaScript (the text can still be selected by hand) and reports the result next to it.
(function () {
  "use strict";
  function report(button, text) {
    const status = document.getElementById("copy-status");
    if (status) status.textContent = text;
    button.dataset.copied = text === "Copied." ? "true" : "false";
  }

  function selectText(element) {
    const range = document.createRange();
    range.selectNodeContents(element);
    const selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
  }

  document.querySelectorAll("[data-copy-target]").forEach((button) => {
    const target = document.getElementById(button.dataset.copyTarget);
    if (!target) return;
    button.hidden = false;
    button.addEventListener("click", () => {
      const text = target.textContent.trim();
      if (navigator.clipboard && window.isSecureContext) {
        navigator.clipboard.writeText(text).then(
          () => report(button, "Copied."),
          () => { selectText(target); report(button, "Copy blocked by the browser; the token is selected, press Ctrl+C."); }
        );
      } else {
        selectText(target);
        const copied = document.execCommand && document.execCommand("copy");
        report(button, copied ? "Copied." : "The token is selected; press Ctrl+C.");
      }
    });
  });
})();
