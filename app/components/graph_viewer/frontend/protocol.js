// Streamlit's custom-component protocol (components v1), by hand: no npm package, nothing fetched.
// 1. tell the host we are ready (apiVersion 1); 2. the host answers with "streamlit:render" carrying
// the Python arguments; 3. we send our value ("streamlit:setComponentValue") and height
// ("streamlit:setFrameHeight") back.
"use strict";
const Streamlit = {
  send(type, data) {
    window.parent.postMessage(Object.assign({ isStreamlitMessage: true, type: type }, data || {}), "*");
  },
  ready() { this.send("streamlit:componentReady", { apiVersion: 1 }); },
  setValue(value) { this.send("streamlit:setComponentValue", { value: value, dataType: "json" }); },
  setHeight(height) { this.send("streamlit:setFrameHeight", { height: height }); },
  onRender(callback) {
    window.addEventListener("message", (event) => {
      const data = event.data;
      if (data && data.type === "streamlit:render") callback(data.args || {}, data);
    });
  },
};
