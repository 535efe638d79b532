/* wealthdesk — client chat page.
 *
 * Sections: strings · state · small helpers · auth · HTTP · toasts · views ·
 * conversations · message store and sync · rendering · streaming drafts · sending ·
 * receipts and typing · handoff · source panel · WebSocket · composer · start-up.
 *
 * Untrusted text (messages, documents, names) only ever goes in through textContent.
 */
'use strict';

(() => {
  // ───────────────────────────── strings ─────────────────────────────

  const STRINGS = {
    en: {
      appTitle: 'Wealth Desk', appSubtitle: 'Your advisory desk',
      skipToComposer: 'Skip to message box',
      loading: 'Loading…', tryAgain: 'Try again',
      signInTitle: 'Sign in to chat with us',
      signInIntro: 'Open this page from your banking app, or paste your access token below.',
      tokenLabel: 'Access token', signIn: 'Sign in',
      signInPrivacy: 'Your token stays in this browser tab and is cleared when you close it.',
      wrongRole: 'This page is for clients. Please sign in with a client account.',
      badToken: "That token isn't valid. Please check it and try again.",
      expired: 'Your session has expired. Please sign in again.',
      previousEnded: 'Your previous conversation has ended.',
      startTitle: 'How may we help you today?',
      startIntro: 'Choose the language for your conversation.',
      feature1: 'Take the risk assessment in a few minutes',
      feature2: 'Answers quote our documents, with sources',
      feature3: 'A human advisor whenever you want one',
      chatHeading: 'Conversation',
      welcomeTitle: 'Hello! How can we help?',
      welcomeText: 'Ask about our funds, take the risk assessment, or talk to an advisor at any time. Our answers quote our documents, with sources.',
      suggestionsLabel: 'Try asking',
      suggestions: ['Assess my risk profile', 'Which funds suit me?', 'When does redemption money arrive?'],
      jumpLatest: 'New messages',
      conn_connecting: 'Connecting…', conn_online: 'Online', conn_reconnecting: 'Reconnecting…', conn_offline: 'Offline',
      askAdvisor: 'Talk to an advisor',
      composerLabel: 'Message', composerPlaceholder: 'Type your message…',
      composerHint: 'Press Enter to send, Shift+Enter for a new line.',
      send: 'Send', sending: 'Sending…', notSent: 'Not sent', retry: 'Retry', read: 'Read',
      closedNote: 'This conversation has ended.', newConversation: 'New conversation',
      dismiss: 'Dismiss', close: 'Close',
      assistant: 'Assistant', advisor: 'Advisor', system: 'Notice',
      modeOffline: 'Offline mode — answers quote our documents', modeLlm: 'AI assistant',
      questionOf: 'Question {i} of {n}',
      questionHint: 'Tap an answer or reply with its letter. Say "back" to change the previous answer.',
      previousAnswer: 'Your earlier answer',
      assessmentTitle: 'Your risk profile', productsUpTo: 'Suitable products up to {level}',
      allowedLevels: 'Product risk levels for you', validUntil: 'Valid until {date}', adjusted: 'Adjusted:',
      sources: 'Sources', productsTitle: 'Products for you', riskLevel: 'Risk {level}',
      disclosureTitle: 'Risk disclosure',
      disclosure_risk_warning: 'Investing involves risk. The value of an investment can fall as well as rise, and you may get back less than you invested. Please read the product documents and make sure a product matches your risk profile before you invest.',
      disclosure_past_performance: 'Past performance is not a reliable indicator of future results.',
      suitable: 'Suitable for your risk profile', unsuitable: 'Not suitable for your risk profile',
      connecting: 'Connecting you with an advisor',
      status_bot: "You're chatting with our AI assistant",
      status_botBack: 'The advisor has left — our assistant is with you again',
      status_queued: 'In the queue — position {p}, about {m} min',
      status_queuedPos: 'In the queue — position {p}',
      status_queuedAny: 'In the queue — an advisor will be with you shortly',
      status_priority: 'prioritised',
      status_advisor: 'Advisor {name} joined', status_advisorAnon: 'An advisor joined',
      status_closed: 'This conversation is closed',
      ev_queued: "You're in the queue for an advisor.", ev_escalated: 'Your request has been prioritised.',
      ev_joined: 'Advisor {name} joined the conversation.', ev_transferred: "You've been transferred to advisor {name}.",
      ev_returned: 'The advisor has left the conversation.', ev_closed: 'The conversation was closed.',
      typingNamed: 'Advisor {name} is typing…', typingAnon: 'The advisor is typing…',
      alreadyQueued: 'You are already in the queue — an advisor will be with you soon.',
      sourceKicker: 'Source document', sourceLoading: 'Loading the document…',
      sourceVersion: 'Version {v}', sourceOlder: 'This is the version the answer quoted; the document has since been updated.',
      networkError: "We couldn't reach the server. Please check your connection.",
      genericError: 'Something went wrong. Please try again.',
      langToggle: '中文', langToggleLabel: '切换到中文 (Switch to Chinese)',
    },
    'zh-CN': {
      appTitle: '财富顾问', appSubtitle: '您的专属理财服务',
      skipToComposer: '跳到输入框',
      loading: '正在加载…', tryAgain: '重试',
      signInTitle: '登录后开始咨询',
      signInIntro: '请从手机银行打开本页面，或在下方粘贴您的访问令牌。',
      tokenLabel: '访问令牌', signIn: '登录',
      signInPrivacy: '令牌只保存在当前浏览器标签页中，关闭后即清除。',
      wrongRole: '本页面仅供客户使用，请使用客户账号登录。',
      badToken: '令牌无效，请检查后重试。',
      expired: '登录已过期，请重新登录。',
      previousEnded: '您之前的会话已结束。',
      startTitle: '今天有什么可以帮您？',
      startIntro: '请选择会话语言。',
      feature1: '几分钟完成风险测评',
      feature2: '回答引用我们的资料并注明出处',
      feature3: '随时可转接人工顾问',
      chatHeading: '会话',
      welcomeTitle: '您好！有什么可以帮您？',
      welcomeText: '您可以咨询我们的基金产品、进行风险测评，也可以随时转接人工顾问。回答均引用我们的资料并注明出处。',
      suggestionsLabel: '您可以问',
      suggestions: ['开始风险测评', '有哪些适合我的基金？', '赎回的钱多久到账？'],
      jumpLatest: '新消息',
      conn_connecting: '连接中…', conn_online: '在线', conn_reconnecting: '重新连接中…', conn_offline: '离线',
      askAdvisor: '转人工顾问',
      composerLabel: '消息', composerPlaceholder: '请输入消息…',
      composerHint: '按 Enter 发送，Shift+Enter 换行。',
      send: '发送', sending: '发送中…', notSent: '未发送', retry: '重试', read: '已读',
      closedNote: '本次会话已结束。', newConversation: '开始新会话',
      dismiss: '关闭提示', close: '关闭',
      assistant: '智能助手', advisor: '顾问', system: '通知',
      modeOffline: '离线模式 — 回答直接引用我们的资料', modeLlm: 'AI 助手',
      questionOf: '第 {i} 题，共 {n} 题',
      questionHint: '请点选答案，或回复选项字母。回复“上一题”可修改上一个回答。',
      previousAnswer: '您之前的回答',
      assessmentTitle: '您的风险测评结果', productsUpTo: '适合 {level} 及以下风险等级的产品',
      allowedLevels: '适合您的产品风险等级', validUntil: '有效期至 {date}', adjusted: '调整原因：',
      sources: '出处', productsTitle: '为您推荐的产品', riskLevel: '风险等级 {level}',
      disclosureTitle: '风险提示',
      disclosure_risk_warning: '投资有风险，产品净值可能下跌，您可能损失部分本金。投资前请仔细阅读产品资料，确认产品与您的风险承受能力相匹配。',
      disclosure_past_performance: '过往业绩不代表未来表现。',
      suitable: '符合您的风险承受能力', unsuitable: '超出您的风险承受能力',
      connecting: '正在为您转接人工顾问',
      status_bot: '智能助手为您服务',
      status_botBack: '顾问已离开，智能助手继续为您服务',
      status_queued: '排队中 — 第 {p} 位，预计约 {m} 分钟',
      status_queuedPos: '排队中 — 第 {p} 位',
      status_queuedAny: '排队中 — 顾问将尽快为您服务',
      status_priority: '已优先处理',
      status_advisor: '顾问 {name} 已加入', status_advisorAnon: '顾问已加入',
      status_closed: '本次会话已结束',
      ev_queued: '您已进入人工顾问队列。', ev_escalated: '您的请求已被优先处理。',
      ev_joined: '顾问 {name} 已加入会话。', ev_transferred: '已为您转接到顾问 {name}。',
      ev_returned: '顾问已离开会话。', ev_closed: '会话已结束。',
      typingNamed: '顾问 {name} 正在输入…', typingAnon: '顾问正在输入…',
      alreadyQueued: '您已在排队中，顾问会尽快为您服务。',
      sourceKicker: '资料原文', sourceLoading: '正在加载资料…',
      sourceVersion: '版本 {v}', sourceOlder: '这是回答引用时的版本，该资料之后已有更新。',
      networkError: '无法连接服务器，请检查网络。',
      genericError: '出了点问题，请重试。',
      langToggle: 'EN', langToggleLabel: 'Switch to English（切换到英文）',
    },
  };

  /** Looks a string up in the current language and fills {placeholders}. */
  function t(key, vars) {
    const table = STRINGS[state.lang] || STRINGS.en;
    let s = key in table ? table[key] : STRINGS.en[key];
    if (s === undefined) return key;
    if (vars && typeof s === 'string') {
      s = s.replace(/\{(\w+)\}/g, (m, name) => (vars[name] !== undefined && vars[name] !== null ? String(vars[name]) : m));
    }
    return s;
  }

  function normalizeLang(value) {
    return String(value || '').toLowerCase().startsWith('zh') ? 'zh-CN' : 'en';
  }

  // ───────────────────────────── state ─────────────────────────────

  const KEY_TOKEN = 'wealthdesk.chat.token';
  const KEY_LANG = 'wealthdesk.chat.lang';
  const KEY_PENDING = 'wealthdesk.chat.pending.';
  const BACKOFF_MIN_MS = 500;
  const BACKOFF_MAX_MS = 10000;
  const TYPING_THROTTLE_MS = 3000;
  const TYPING_IDLE_MS = 5000;
  const REMOTE_TYPING_MS = 6000;
  const QUEUE_POLL_MS = 15000;
  const RESEND_AFTER_MS = 8000;
  const TOAST_MS = 10000;

  const state = {
    token: null, claims: null,
    lang: normalizeLang(navigator.language), langChosen: false,
    conv: null, closed: false,
    messages: new Map(),   // seq → Message, every message shown
    nodes: new Map(),      // seq → rendered element
    lastSeq: 0,            // highest seq with nothing missing before it
    maxSeq: 0,             // highest seq shown
    seenIds: new Set(),    // client_msg_ids of stored messages (own sends and finished streams)
    withdrawn: new Set(),  // stream ids of bot replies withheld by a handoff: never shown again
    pending: new Map(),    // client_msg_id → unacknowledged send
    frames: new Map(),     // socket frame id → { type, cmid }
    drafts: new Map(),     // stream_id → streaming bot reply
    readSeq: 0, receiptSent: 0,
    handoff: null, lastHandoffEvent: null, advisorNames: new Map(),
    ws: null, wsReady: false, attempt: 0, participantId: null,
    heartbeatSecs: 20, lastFrameAt: 0,
    syncing: null, syncAgain: false, behindSeq: 0,
    typingActive: false, typingSentAt: 0,
    sourceOpener: null, sourceRequest: 0,
    timers: {},
  };

  const $ = (id) => document.getElementById(id);
  const dom = {};

  // ───────────────────────────── small helpers ─────────────────────────────

  /** Creates an element. attrs: class, text, data (dataset), on (listeners), others as attributes. */
  function el(tag, attrs, children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === 'class') node.className = v;
      else if (k === 'text') node.textContent = String(v);
      else if (k === 'data') Object.entries(v).forEach(([dk, dv]) => { if (dv !== undefined && dv !== null) node.dataset[dk] = String(dv); });
      else if (k === 'on') Object.entries(v).forEach(([ev, fn]) => node.addEventListener(ev, fn));
      else node.setAttribute(k, v === true ? '' : String(v));
    }
    for (const child of [].concat(children || [])) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function clearTimer(name) { clearTimeout(state.timers[name]); clearInterval(state.timers[name]); state.timers[name] = null; }
  function later(name, ms, fn) { clearTimer(name); state.timers[name] = setTimeout(fn, ms); }

  function randomId(prefix) {
    const bytes = new Uint8Array(12);
    crypto.getRandomValues(bytes);
    return prefix + Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
  }

  let frameCounter = 0;
  const nextFrameId = () => 'f' + (++frameCounter);

  /** A bilingual field may arrive as a string or as {"zh-CN": …, "en": …}. */
  function localized(value) {
    if (value === null || value === undefined) return '';
    if (typeof value === 'object') return String(value[state.lang] || value.en || value['zh-CN'] || Object.values(value)[0] || '');
    return String(value);
  }

  function formatTime(iso) {
    const d = new Date(iso);
    if (Number.isNaN(d.getTime())) return '';
    const sameDay = d.toDateString() === new Date().toDateString();
    const opts = sameDay ? { hour: '2-digit', minute: '2-digit' } : { month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit' };
    return new Intl.DateTimeFormat(state.lang, opts).format(d);
  }

  function formatDate(iso) {
    const d = new Date(iso);
    return Number.isNaN(d.getTime()) ? String(iso || '') : new Intl.DateTimeFormat(state.lang, { dateStyle: 'medium' }).format(d);
  }

  const enc = encodeURIComponent;
  const isTouch = () => window.matchMedia('(pointer: coarse)').matches;

  // ───────────────────────────── auth ─────────────────────────────

  /** Decodes the JWT payload (base64url middle part); null when it is not a JWT. */
  function decodeJwt(token) {
    try {
      const part = token.split('.')[1];
      const b64 = part.replace(/-/g, '+').replace(/_/g, '/').padEnd(Math.ceil(part.length / 4) * 4, '=');
      const json = new TextDecoder().decode(Uint8Array.from(atob(b64), (c) => c.charCodeAt(0)));
      const claims = JSON.parse(json);
      return claims && typeof claims === 'object' ? claims : null;
    } catch (_) {
      return null;
    }
  }

  /** Takes `#token=…` from the address bar (and removes it from there). */
  function takeTokenFromFragment() {
    const params = new URLSearchParams(location.hash.replace(/^#/, ''));
    const token = params.get('token');
    if (!token) return null;
    history.replaceState(null, '', location.pathname + location.search);
    return token;
  }

  const tokenExpired = () => !!(state.claims && state.claims.exp && state.claims.exp * 1000 <= Date.now());

  function signIn(rawToken) {
    const token = String(rawToken || '').trim().replace(/^Bearer\s+/i, '');
    const claims = decodeJwt(token);
    if (!claims) return showSignIn(t('badToken'));
    if (claims.role !== 'client') return showSignIn(t('wrongRole'));
    if (claims.exp && claims.exp * 1000 <= Date.now()) return showSignIn(t('expired'));
    if (state.token !== token) { closeSocket(); state.attempt = 0; }
    state.token = token;
    state.claims = claims;
    sessionStorage.setItem(KEY_TOKEN, token);
    if (!state.langChosen && claims.lang) setLang(claims.lang);
    hideToast();
    loadConversations();
  }

  /** Forgets the token, drops the socket and shows the sign-in form (with a reason). */
  function signOut(reason) {
    sessionStorage.removeItem(KEY_TOKEN);
    state.token = null;
    state.claims = null;
    closeSocket();
    stopQueuePolling();
    state.conv = null;
    showSignIn(reason);
  }

  function showSignIn(reason) {
    showView('signin');
    setConnection('offline');
    if (reason) showToast(reason);
    if (!isTouch()) dom.tokenInput.focus();
  }

  // ───────────────────────────── HTTP ─────────────────────────────

  class ApiError extends Error {
    constructor(status, code, message) { super(message); this.status = status; this.code = code; }
  }

  /** JSON request with the bearer token; throws ApiError. A 401 signs out. */
  async function api(method, path, body) {
    const headers = { Accept: 'application/json', Authorization: 'Bearer ' + state.token };
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    let res;
    try {
      res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), cache: 'no-store' });
    } catch (_) {
      throw new ApiError(0, 'network', t('networkError'));
    }
    const data = await res.json().catch(() => null);
    if (!res.ok) {
      const err = new ApiError(res.status, (data && data.error) || 'http_' + res.status, (data && data.message) || t('genericError'));
      if (res.status === 401) signOut(err.code === 'token_expired' ? t('expired') : err.message);
      throw err;
    }
    return data || {};
  }

  // ───────────────────────────── toasts ─────────────────────────────

  /** Shows a message in the alert region; variant "info" is the gentle one. */
  function showToast(message, variant) {
    dom.toast.dataset.variant = variant || 'error';
    dom.error.textContent = message || t('genericError');
    dom.toast.hidden = false;
    later('toast', TOAST_MS, hideToast);
  }

  function hideToast() {
    clearTimer('toast');
    dom.toast.hidden = true;
    dom.error.textContent = '';
  }

  // ───────────────────────────── views ─────────────────────────────

  function showView(name) {
    for (const v of ['loading', 'signin', 'start', 'chat']) $('view-' + v).hidden = v !== name;
    const inChat = name === 'chat';
    dom.statusbar.hidden = !inChat;
    dom.footer.hidden = !inChat;
    if (!inChat) { dom.jump.hidden = true; setRemoteTyping(null); }
    document.body.dataset.view = name;
  }

  function setConnection(stateName) {
    dom.connection.dataset.state = stateName;
    dom.connectionLabel.textContent = t('conn_' + stateName);
  }

  /** Switches the UI language and re-renders everything that carries words. */
  function setLang(lang) {
    state.lang = normalizeLang(lang);
    document.documentElement.lang = state.lang;
    document.title = t('appTitle');
    for (const node of document.querySelectorAll('[data-i18n]')) node.textContent = t(node.dataset.i18n);
    dom.langToggle.textContent = t('langToggle');
    dom.langToggle.setAttribute('aria-label', t('langToggleLabel'));
    dom.composer.placeholder = t('composerPlaceholder');
    setConnection(dom.connection.dataset.state || 'connecting');
    renderSuggestions();
    rerenderMessages();
    renderHandoffBanner();
  }

  function renderSuggestions() {
    dom.suggestions.querySelectorAll('.chip').forEach((n) => n.remove());
    for (const text of t('suggestions')) {
      dom.suggestions.append(el('button', { type: 'button', class: 'chip', text, on: { click: () => sendMessage(text) } }));
    }
  }

  // ───────────────────────────── conversations ─────────────────────────────

  /** Opens the newest open conversation, or offers to start one. */
  async function loadConversations() {
    showView('loading');
    $('retry-load').hidden = true;
    try {
      const data = await api('GET', '/v1/conversations?limit=20');
      const list = Array.isArray(data.conversations) ? data.conversations : [];
      const open = list.find((c) => c.mode !== 'closed');
      if (open) await openConversation(open);
      else showStart(list.length > 0);
    } catch (err) {
      if (err.status === 401) return;
      showToast(err.message);
      $('retry-load').hidden = false;
    }
  }

  function showStart(hadPrevious) {
    resetConversation();
    $('start-note').hidden = !hadPrevious;
    showView('start');
    if (!state.ws) connectSocket();
    const preferred = document.querySelector(`.lang-btn[data-lang="${state.lang}"]`);
    if (preferred && !isTouch()) preferred.focus();
  }

  async function startConversation(language, button) {
    const buttons = document.querySelectorAll('.lang-btn');
    buttons.forEach((b) => { b.disabled = true; });
    button.setAttribute('aria-busy', 'true');
    try {
      const conv = await api('POST', '/v1/conversations', { language });
      if (!state.langChosen) setLang(language);
      await openConversation(conv);
    } catch (err) {
      if (err.status !== 401) showToast(err.message);
    } finally {
      buttons.forEach((b) => { b.disabled = false; });
      button.removeAttribute('aria-busy');
    }
  }

  /** Forgets everything about the current conversation. */
  function resetConversation() {
    state.conv = null;
    state.closed = false;
    state.messages.clear();
    state.nodes.clear();
    state.seenIds.clear();
    state.withdrawn.clear();
    state.pending.clear();
    state.frames.clear();
    state.drafts.clear();
    state.advisorNames.clear();
    Object.assign(state, { lastSeq: 0, maxSeq: 0, readSeq: 0, receiptSent: 0, behindSeq: 0, handoff: null, lastHandoffEvent: null });
    stopQueuePolling();
    dom.messages.replaceChildren();
    setRemoteTyping(null);
  }

  async function openConversation(conv) {
    resetConversation();
    state.conv = conv;
    if (!state.langChosen) setLang(conv.language);
    showView('chat');
    setClosed(conv.mode === 'closed');
    applyHandoff(handoffFromMode(conv.mode));
    dom.messages.setAttribute('aria-busy', 'true');
    await syncMessages();
    dom.messages.removeAttribute('aria-busy');
    restorePending();
    updateWelcome();
    scrollToBottom(true);
    refreshHandoff();
    if (state.wsReady) onConversationReady();
    else if (!state.ws) connectSocket();
  }

  /** Once both the conversation and the socket are there: catch up and resend. */
  function onConversationReady() {
    subscribeConversation();
    syncMessages();
    resendPending();
    scheduleReceipt();
  }

  // ───────────────────────────── message store and sync ─────────────────────────────

  /** Adds a message once (de-duplicated by seq) and renders it in seq order. */
  function ingestMessage(msg) {
    if (!msg || !state.conv || msg.conversation_id !== state.conv.id) return false;
    const seq = Number(msg.seq);
    if (!Number.isInteger(seq) || seq < 1 || state.messages.has(seq)) return false;
    state.messages.set(seq, msg);
    if (msg.client_msg_id) state.seenIds.add(msg.client_msg_id);
    const gap = seq > state.lastSeq + 1;
    while (state.messages.has(state.lastSeq + 1)) state.lastSeq += 1;
    state.maxSeq = Math.max(state.maxSeq, seq);

    const stick = isNearBottom();
    placeMessage(msg);
    onNewMessage(msg);
    updateWelcome();
    if (stick || isOwn(msg)) scrollToBottom();
    else dom.jump.hidden = false;
    if (gap) syncMessages();
    return true;
  }

  function placeMessage(msg) {
    const node = renderMessage(msg);
    const pending = msg.client_msg_id && state.pending.get(msg.client_msg_id);
    if (pending && isOwn(msg)) {
      // Our own send came back: it replaces its pending bubble.
      pending.node.remove();
      state.pending.delete(msg.client_msg_id);
      savePending();
    }
    const draft = msg.client_msg_id && state.drafts.get(msg.client_msg_id);
    if (draft) { draft.node.remove(); state.drafts.delete(msg.client_msg_id); }
    insertBySeq(node, msg.seq);
    state.nodes.set(msg.seq, node);
  }

  /** Inserts before the first message with a higher seq, else before the pending/draft tail. */
  function insertBySeq(node, seq) {
    let before = null;
    if (seq < state.maxSeq) {
      for (const [s, n] of state.nodes) if (s > seq && (!before || s < Number(before.dataset.seq))) before = n;
    }
    before = before || dom.messages.querySelector('[data-tail]');
    dom.messages.insertBefore(node, before);
  }

  /** Side effects of a new message: handoff, typing, question buttons, receipts. */
  function onNewMessage(msg) {
    const role = msg.sender && msg.sender.role;
    const body = msg.body || {};
    if (msg.kind === 'handoff') {
      const h = body.handoff || {};
      if (h.advisor && h.advisor.id) learnAdvisorName(h.advisor);
      if (role === 'system') {
        state.lastHandoffEvent = h.event || null;
        dropDrafts();
        applyHandoffEvent(h);
      }
      scheduleHandoffRefresh();
    }
    if (role === 'advisor') setRemoteTyping(null);
    if (isOwn(msg) && msg.seq <= state.readSeq) markRead(state.nodes.get(msg.seq));
    scheduleQuestionUpdate();
    scheduleReceipt();
  }

  /** Fetches everything after lastSeq over HTTP (one run at a time; re-runs if asked meanwhile). */
  async function syncMessages() {
    if (!state.conv || !state.token) return;
    const convId = state.conv.id;
    if (state.syncing === convId) { state.syncAgain = true; return; }
    state.syncing = convId; // a run for another (previous) conversation stops by itself
    try {
      do {
        state.syncAgain = false;
        for (;;) {
          const from = state.lastSeq;
          const page = await api('GET', `/v1/conversations/${enc(convId)}/messages?after_seq=${from}&limit=500`);
          if (!state.conv || state.conv.id !== convId) return;
          (page.messages || []).forEach(ingestMessage);
          if (!page.has_more || state.lastSeq === from) break;
        }
      } while (state.syncAgain);
    } catch (err) {
      if (err.status !== 401 && err.status !== 0) console.warn('sync failed', err);
    } finally {
      if (state.syncing === convId) state.syncing = null;
    }
  }

  const isOwn = (msg) => !!(msg && msg.sender && msg.sender.role === 'client');

  // ───────────────────────────── rendering ─────────────────────────────

  /** Builds the element of one stored message. */
  function renderMessage(msg) {
    const role = (msg.sender && msg.sender.role) || 'system';
    const kind = msg.kind || 'text';
    const body = msg.body && typeof msg.body === 'object' ? msg.body : { text: String(msg.body || '') };
    if (role === 'system') return renderSystemNotice(msg, body);

    const node = el('article', { class: `msg msg--${role} msg--kind-${kind}`, data: { testid: 'message', seq: msg.seq, role, kind } });
    if (role !== 'client') node.append(renderSender(msg, role, body));
    const bubble = el('div', { class: 'bubble' });
    (RENDERERS[kind] || renderText)(bubble, body, msg);
    node.append(bubble);
    if (body.offer_human_advisor === true) node.append(renderOfferButton());
    node.append(renderMeta(msg, role));
    return node;
  }

  function renderSender(msg, role, body) {
    const label = el('p', { class: 'sender' });
    if (role === 'advisor') {
      const id = msg.sender.id;
      label.append(el('span', { class: 'badge badge--advisor', text: t('advisor') }), ' ', el('span', { class: 'sender-name', text: state.advisorNames.get(id) || id || '' }));
    } else {
      label.append(el('span', { class: 'sender-name', text: t('assistant') }));
      if (msg.kind === 'greeting' && body.mode) {
        label.append(' ', el('span', { class: `badge badge--mode badge--${body.mode === 'offline' ? 'offline' : 'llm'}`, text: t(body.mode === 'offline' ? 'modeOffline' : 'modeLlm') }));
      }
    }
    return label;
  }

  function renderMeta(msg, role) {
    const meta = el('p', { class: 'meta' }, [el('time', { datetime: msg.created_at, text: formatTime(msg.created_at) })]);
    if (role === 'client' && msg.seq <= state.readSeq) meta.append(readMark());
    return meta;
  }

  const readMark = () => el('span', { class: 'read-mark', data: { testid: 'read' } }, [el('span', { 'aria-hidden': 'true', text: '✓✓ ' }), t('read')]);

  function markRead(node) {
    if (!node || node.querySelector('[data-testid="read"]')) return;
    const meta = node.querySelector('.meta');
    if (meta) meta.append(readMark());
  }

  const textBlock = (text) => el('p', { class: 'text', text: text || '' });

  function renderText(bubble, body) { bubble.append(textBlock(body.text)); }

  function renderAnswer(bubble, body) {
    bubble.append(textBlock(body.text));
    appendIf(bubble, renderCitations(body.citations));
  }

  function renderRefusal(bubble, body) {
    bubble.classList.add('bubble--refusal');
    bubble.append(textBlock(body.text));
  }

  function renderBotHandoff(bubble, body) {
    bubble.append(el('p', { class: 'handoff-tag' }, [el('span', { class: 'pulse', 'aria-hidden': 'true' }), t('connecting')]), textBlock(body.text));
  }

  /** A questionnaire question: progress, the question, one button per option. */
  function renderQuestion(bubble, body, msg) {
    const q = body.question;
    if (!q || !Array.isArray(q.options)) return renderText(bubble, body);
    bubble.classList.add('bubble--card');
    const textId = `q-${msg.seq}`;
    const total = Number(q.total) || 0;
    const index = Number(q.index) || 0;
    bubble.append(el('p', { class: 'q-progress-label', text: t('questionOf', { i: index, n: total }) }));
    if (total > 0) {
      const bar = el('div', { class: 'q-progress', 'aria-hidden': 'true' }, [el('span')]);
      bar.firstChild.style.width = `${Math.min(100, Math.round((index / total) * 100))}%`;
      bubble.append(bar);
    }
    bubble.append(el('p', { class: 'q-text', id: textId, text: q.text || body.text }));
    const group = el('div', { class: 'options', role: 'group', 'aria-labelledby': textId });
    for (const option of q.options) {
      const previous = q.previous_answer !== null && q.previous_answer !== undefined && String(q.previous_answer) === String(option.id);
      const button = el('button', {
        type: 'button', class: 'option' + (previous ? ' is-previous' : ''), disabled: true, 'aria-pressed': 'false',
        data: { testid: 'option', questionId: q.question_id, optionId: option.id },
        on: { click: () => answerQuestion(q, option, button) },
      }, [
        el('span', { class: 'option-letter', 'aria-hidden': 'true', text: option.letter || option.number || '' }),
        el('span', { class: 'option-label', text: option.label || '' }),
        previous ? el('span', { class: 'option-note', text: t('previousAnswer') }) : null,
      ]);
      if (option.letter) button.setAttribute('aria-label', `${option.letter}. ${option.label || ''}${previous ? ` (${t('previousAnswer')})` : ''}`);
      group.append(button);
    }
    bubble.append(group, el('p', { class: 'q-hint', text: t('questionHint') }));
  }

  function renderAssessment(bubble, body) {
    const p = body.profile;
    if (p && typeof p === 'object') {
      bubble.classList.add('bubble--card');
      const card = el('section', { class: 'assessment', 'aria-label': t('assessmentTitle') }, [
        el('p', { class: 'assessment-kicker', text: t('assessmentTitle') }),
        el('div', { class: 'assessment-head' }, [
          el('span', { class: 'level-badge', text: p.level || '?' }),
          el('span', { class: 'level-name', text: localized(p.level_name || p.category) }),
        ]),
      ]);
      if (p.max_product) card.append(el('p', { class: 'assessment-line', text: t('productsUpTo', { level: p.max_product }) }));
      if (Array.isArray(p.allowed_products) && p.allowed_products.length) {
        card.append(el('p', { class: 'assessment-sub', text: t('allowedLevels') }),
          el('ul', { class: 'level-chips' }, p.allowed_products.map((l) => el('li', { class: 'chip chip--static', text: l }))));
      }
      if (p.expires_at) card.append(el('p', { class: 'assessment-sub', text: t('validUntil', { date: formatDate(p.expires_at) }) }));
      for (const o of Array.isArray(p.overrides) ? p.overrides : []) {
        if (o && o.reason) card.append(el('p', { class: 'assessment-override', text: `${t('adjusted')} ${localized(o.reason)}` }));
      }
      bubble.append(card);
    }
    bubble.append(textBlock(body.text));
  }

  function renderRecommendation(bubble, body) {
    bubble.append(textBlock(body.text));
    const products = Array.isArray(body.products) ? body.products : [];
    if (products.length) {
      bubble.append(el('p', { class: 'section-label', text: t('productsTitle') }),
        el('ul', { class: 'product-list' }, products.map((p) => el('li', {}, [productCard(p)]))));
    }
    appendIf(bubble, renderDisclosure(body.disclosures, true));
    appendIf(bubble, renderCitations(body.citations));
  }

  function renderProduct(bubble, body) {
    if (body.product && typeof body.product === 'object') bubble.append(productCard(body.product, body.suitability));
    bubble.append(textBlock(body.text));
    appendIf(bubble, renderDisclosure(body.disclosures, false));
    appendIf(bubble, renderCitations(body.citations));
  }

  /** A product summary; products may be strings or objects with any of name/id/risk_level. */
  function productCard(p, suitability) {
    if (typeof p !== 'object' || p === null) return el('div', { class: 'product-card' }, [el('p', { class: 'product-name', text: String(p) })]);
    const id = p.product_id || p.id || '';
    const card = el('div', { class: 'product-card' }, [
      el('div', { class: 'product-head' }, [
        el('p', { class: 'product-name', text: localized(p.name) || id }),
        p.risk_level ? el('span', { class: `risk-chip risk-${String(p.risk_level).toLowerCase()}`, text: t('riskLevel', { level: p.risk_level }) }) : null,
      ]),
      id && localized(p.name) ? el('p', { class: 'product-id', text: id }) : null,
    ]);
    if (suitability && typeof suitability.eligible === 'boolean') {
      card.append(el('p', { class: 'suitability ' + (suitability.eligible ? 'is-ok' : 'is-not') }, [
        el('span', { 'aria-hidden': 'true', text: suitability.eligible ? '✓ ' : '✕ ' }),
        t(suitability.eligible ? 'suitable' : 'unsuitable'),
      ]));
    }
    return card;
  }

  /** The disclosure texts: an object of texts, a list of keys, or a single string. */
  function disclosureTexts(d) {
    const known = (k) => (STRINGS.en['disclosure_' + k] ? t('disclosure_' + k) : null);
    if (typeof d === 'string') return [d];
    if (Array.isArray(d)) return d.map((k) => (typeof k === 'string' ? known(k) || k : localized(k && k.text))).filter(Boolean);
    if (d && typeof d === 'object') {
      return Object.entries(d).map(([k, v]) => (typeof v === 'string' ? v : v === true ? known(k) : localized(v))).filter(Boolean);
    }
    return [];
  }

  function renderDisclosure(disclosures, always) {
    let texts = disclosureTexts(disclosures);
    if (!texts.length && always) texts = [t('disclosure_risk_warning')];
    if (!texts.length) return null;
    return el('aside', { class: 'disclosure', data: { testid: 'disclosure' }, role: 'note', 'aria-label': t('disclosureTitle') }, [
      el('p', { class: 'disclosure-title' }, [el('span', { class: 'disclosure-icon', 'aria-hidden': 'true', text: '⚠' }), t('disclosureTitle')]),
      ...texts.map((text) => el('p', { class: 'disclosure-text', text })),
    ]);
  }

  function renderCitations(citations) {
    const list = (Array.isArray(citations) ? citations : []).filter((c) => c && c.doc_id);
    if (!list.length) return null;
    return el('div', { class: 'citations' }, [
      el('p', { class: 'section-label', text: t('sources') }),
      el('ul', { class: 'citation-list' }, list.map((c, i) => {
        const label = `[${c.n || i + 1}] ${localized(c.title) || c.doc_id}${c.section ? ' — ' + c.section : ''}`;
        const button = el('button', { type: 'button', class: 'citation', 'aria-haspopup': 'dialog', data: { testid: 'citation', docId: c.doc_id }, text: label });
        button.addEventListener('click', () => openSource(c, button));
        return el('li', {}, [button]);
      })),
    ]);
  }

  function renderOfferButton() {
    const button = el('button', { type: 'button', class: 'btn btn-outline btn-pill offer-advisor js-ask', data: { testid: 'offer-advisor' }, text: t('askAdvisor') });
    button.addEventListener('click', requestAdvisor);
    button.disabled = !canAskAdvisor();
    return button;
  }

  /** System notices (handoff events) are centred lines, not bubbles. */
  function renderSystemNotice(msg, body) {
    const h = body.handoff || {};
    const name = (h.advisor && (h.advisor.name || h.advisor.id)) || '';
    const text = body.text || (h.event ? t('ev_' + h.event, { name }) : '');
    return el('div', { class: `notice notice--${h.event || 'info'}`, data: { testid: 'message', seq: msg.seq, role: 'system', kind: msg.kind || 'text' } }, [
      el('p', { class: 'notice-text', text }),
      el('time', { class: 'notice-time', datetime: msg.created_at, text: formatTime(msg.created_at) }),
    ]);
  }

  const RENDERERS = {
    text: renderText, greeting: renderText, answer: renderAnswer, refusal: renderRefusal,
    question: renderQuestion, assessment: renderAssessment, recommendation: renderRecommendation,
    product: renderProduct, handoff: renderBotHandoff,
  };

  function appendIf(parent, child) { if (child) parent.append(child); }

  /** Re-renders every message (after a language switch). */
  function rerenderMessages() {
    for (const [seq, node] of state.nodes) {
      const fresh = renderMessage(state.messages.get(seq));
      node.replaceWith(fresh);
      state.nodes.set(seq, fresh);
    }
    for (const p of state.pending.values()) { const fresh = renderPending(p); p.node.replaceWith(fresh); p.node = fresh; }
    for (const d of state.drafts.values()) d.node.querySelector('.sender-name').textContent = t('assistant');
    scheduleQuestionUpdate();
  }

  /**
   * Only the newest question is answerable, and only while nothing was said after it.
   * Also marks the option each earlier question was answered with.
   */
  function updateQuestionButtons() {
    let activeSeq = 0;
    const chosen = new Map(); // question seq → option id
    let lastQuestion = null;
    for (const seq of [...state.messages.keys()].sort((a, b) => a - b)) {
      const m = state.messages.get(seq);
      if (m.kind === 'question' && m.sender && m.sender.role === 'bot') { lastQuestion = m; activeSeq = seq; continue; }
      if (isOwn(m)) {
        activeSeq = 0;
        const a = m.body && m.body.answer;
        const q = lastQuestion && lastQuestion.body && lastQuestion.body.question;
        if (a && q && a.question_id === q.question_id) chosen.set(lastQuestion.seq, String(a.option_id));
      }
    }
    const sending = [...state.pending.values()].filter((p) => !p.failed);
    for (const p of sending) {
      const q = lastQuestion && lastQuestion.body && lastQuestion.body.question;
      if (p.body.answer && q && p.body.answer.question_id === q.question_id) chosen.set(lastQuestion.seq, String(p.body.answer.option_id));
    }
    const open = activeSeq && sending.length === 0 && !state.closed && (!state.handoff || state.handoff.status === 'bot');
    for (const button of dom.messages.querySelectorAll('[data-testid="option"]')) {
      const seq = Number(button.closest('[data-seq]').dataset.seq);
      button.disabled = !(open && seq === activeSeq);
      const picked = chosen.get(seq) === button.dataset.optionId;
      button.classList.toggle('is-chosen', picked);
      button.setAttribute('aria-pressed', String(picked));
    }
  }

  function scheduleQuestionUpdate() {
    if (state.timers.questions) return;
    state.timers.questions = requestAnimationFrame(() => { state.timers.questions = null; updateQuestionButtons(); });
  }

  function answerQuestion(question, option, button) {
    if (button.disabled) return;
    button.classList.add('is-chosen');
    sendMessage(option.label || option.letter || String(option.id), { question_id: question.question_id, option_id: option.id });
  }

  function updateWelcome() {
    dom.welcome.hidden = !(state.conv && state.messages.size === 0 && state.pending.size === 0 && !state.closed);
  }

  function isNearBottom() {
    const s = dom.main;
    return s.scrollHeight - s.scrollTop - s.clientHeight < 120;
  }

  function scrollToBottom() {
    dom.main.scrollTop = dom.main.scrollHeight;
    dom.jump.hidden = true;
  }

  // ───────────────────────────── streaming drafts ─────────────────────────────

  /** A `stream` frame: grow (or reset) the draft bubble of that stream. */
  /** The `index` of the frame that withdraws a reply withheld by a handoff. */
  const WITHDRAWN_INDEX = 4294967295;

  function onStream(f) {
    if (!state.conv || f.conversation_id !== state.conv.id || !f.stream_id) return;
    if (state.seenIds.has(f.stream_id)) return; // finished already: a late frame
    if (state.withdrawn.has(f.stream_id)) return; // withheld by a handoff
    if (f.reset && !f.delta && Number(f.index) === WITHDRAWN_INDEX) {
      // The conversation changed owner while this reply was written: it never arrives.
      state.withdrawn.add(f.stream_id);
      const gone = state.drafts.get(f.stream_id);
      if (gone) { gone.node.remove(); state.drafts.delete(f.stream_id); }
      return;
    }
    const attempt = Number(f.attempt) || 0;
    const index = Number.isFinite(Number(f.index)) ? Number(f.index) : null;
    let d = state.drafts.get(f.stream_id);
    const stick = isNearBottom();
    if (!d) d = createDraft(f.stream_id, attempt);
    if (attempt < d.attempt) return; // a frame of an abandoned attempt
    if (f.reset || attempt > d.attempt) {
      d.text = '';
      d.attempt = attempt;
      d.index = index === null ? -1 : index;
    } else if (index !== null) {
      if (index <= d.index) return; // already applied
      d.index = index;
    }
    d.text += typeof f.delta === 'string' ? f.delta : '';
    d.textNode.textContent = d.text;
    // A stream that stops without its finished message (e.g. a lost node) should not linger.
    later('draft:' + f.stream_id, 90000, () => { const gone = state.drafts.get(f.stream_id); if (gone) { gone.node.remove(); state.drafts.delete(f.stream_id); } });
    if (stick) scrollToBottom();
  }

  function createDraft(streamId, attempt) {
    const textNode = el('p', { class: 'text' });
    const node = el('article', { class: 'msg msg--bot msg--draft', 'aria-hidden': 'true', data: { testid: 'draft', streamId, tail: '1' } }, [
      el('p', { class: 'sender' }, [el('span', { class: 'sender-name', text: t('assistant') })]),
      el('div', { class: 'bubble' }, [textNode, el('span', { class: 'caret' })]),
    ]);
    dom.messages.append(node);
    const d = { node, textNode, text: '', attempt, index: -1 };
    state.drafts.set(streamId, d);
    return d;
  }

  function dropDrafts() {
    for (const [id, d] of state.drafts) { d.node.remove(); state.withdrawn.add(id); }
    state.drafts.clear();
  }

  // ───────────────────────────── sending ─────────────────────────────

  /** Sends a text (optionally a questionnaire answer); shown at once, confirmed by its ack. */
  function sendMessage(rawText, answer) {
    const text = String(rawText || '').trim();
    if (!text || !state.conv || state.closed) return false;
    const p = { id: randomId('m-'), body: answer ? { text, answer } : { text }, createdAt: new Date().toISOString(), sentAt: 0, failed: false, node: null };
    p.node = renderPending(p);
    insertPending(p.node);
    state.pending.set(p.id, p);
    savePending();
    updateWelcome();
    scrollToBottom();
    transmit(p);
    scheduleQuestionUpdate();
    return true;
  }

  /** The bubble of a send that has no seq yet. */
  function renderPending(p) {
    const status = p.failed
      ? el('span', { class: 'send-failed' }, [t('notSent'), ' ',
        el('button', { type: 'button', class: 'link-btn', text: t('retry'), on: { click: () => transmit(p) } })])
      : el('span', { class: 'sending', text: t('sending') });
    return el('article', { class: 'msg msg--client msg--pending' + (p.failed ? ' is-failed' : ''), data: { testid: 'message', role: 'client', kind: 'text', pending: 'true', tail: '1' } }, [
      el('div', { class: 'bubble' }, [textBlock(p.body.text)]),
      el('p', { class: 'meta' }, [status]),
    ]);
  }

  function insertPending(node) {
    const firstDraft = dom.messages.querySelector('[data-testid="draft"]');
    dom.messages.insertBefore(node, firstDraft);
  }

  function setPendingFailed(p, failed) {
    p.failed = failed;
    const fresh = renderPending(p);
    p.node.replaceWith(fresh);
    p.node = fresh;
  }

  /** Sends over the socket when it is up; otherwise the retry loop posts over HTTP. */
  function transmit(p) {
    if (p.failed) setPendingFailed(p, false);
    p.sentAt = Date.now();
    if (state.wsReady && state.conv) {
      const id = nextFrameId();
      state.frames.set(id, { type: 'send', cmid: p.id });
      wsSend({ type: 'send', id, conversation_id: state.conv.id, client_msg_id: p.id, kind: 'text', body: p.body });
    } else {
      sendOverHttp(p);
    }
    ensureRetryLoop();
  }

  async function sendOverHttp(p) {
    if (!state.conv || p.httpInFlight) return;
    p.httpInFlight = true;
    try {
      const ack = await api('POST', `/v1/conversations/${enc(state.conv.id)}/messages`, { client_msg_id: p.id, kind: 'text', body: p.body });
      onAck(Object.assign({ conversation_id: state.conv.id, client_msg_id: p.id }, ack));
      if (!state.wsReady) later('replySync', 2500, syncMessages); // fetch the reply without a socket
    } catch (err) {
      if (err.status === 0 || err.status >= 500 || err.code === 'rate_limited') return; // retried later
      if (err.status === 401) return;
      failSend(p, err.code, err.message);
    } finally {
      p.httpInFlight = false;
    }
  }

  /** An ack: the send is durable; show it as the stored message with its seq. */
  function onAck(ack) {
    const p = state.pending.get(ack.client_msg_id);
    if (!p || !state.conv || ack.seq === undefined) return;
    if (state.messages.has(Number(ack.seq))) { p.node.remove(); state.pending.delete(p.id); savePending(); return; }
    ingestMessage({
      conversation_id: state.conv.id, seq: Number(ack.seq), kind: 'text', body: p.body, client_msg_id: p.id,
      sender: { id: state.participantId || (state.claims && state.claims.sub), role: 'client' },
      created_at: ack.created_at || new Date().toISOString(),
    });
  }

  function failSend(p, code, message) {
    if (!state.pending.has(p.id)) return;
    setPendingFailed(p, true);
    showToast(message);
    if (code === 'conversation_closed') refreshHandoff();
  }

  function resendPending() {
    for (const p of state.pending.values()) if (!p.failed) transmit(p);
  }

  /** Every few seconds: resend anything not acknowledged for a while (same client_msg_id). */
  function ensureRetryLoop() {
    if (state.timers.retry) return;
    state.timers.retry = setInterval(() => {
      if (state.pending.size === 0) { clearTimer('retry'); return; }
      for (const p of state.pending.values()) {
        if (!p.failed && Date.now() - p.sentAt > RESEND_AFTER_MS) transmit(p);
      }
    }, 2000);
  }

  /** Unacknowledged sends survive a reload of the tab. */
  function savePending() {
    if (!state.conv) return;
    const list = [...state.pending.values()].map((p) => ({ id: p.id, body: p.body, createdAt: p.createdAt }));
    try {
      if (list.length) sessionStorage.setItem(KEY_PENDING + state.conv.id, JSON.stringify(list));
      else sessionStorage.removeItem(KEY_PENDING + state.conv.id);
    } catch (_) { /* storage full or blocked: keep them in memory only */ }
  }

  function restorePending() {
    let list = [];
    try { list = JSON.parse(sessionStorage.getItem(KEY_PENDING + state.conv.id) || '[]'); } catch (_) { list = []; }
    for (const saved of Array.isArray(list) ? list : []) {
      if (!saved || !saved.id || state.seenIds.has(saved.id) || state.pending.has(saved.id)) continue;
      const p = { id: saved.id, body: saved.body, createdAt: saved.createdAt, sentAt: 0, failed: false, node: null };
      p.node = renderPending(p);
      insertPending(p.node);
      state.pending.set(p.id, p);
    }
    savePending();
    if (state.pending.size) ensureRetryLoop();
  }

  // ───────────────────────────── receipts and typing ─────────────────────────────

  function scheduleReceipt() { later('receipt', 400, sendReceipt); }

  /** Tells the others we have read up to the newest message shown — only while visible. */
  function sendReceipt() {
    if (!state.wsReady || !state.conv || state.closed || document.visibilityState !== 'visible') return;
    if (state.maxSeq <= state.receiptSent) return;
    state.receiptSent = state.maxSeq;
    wsSend({ type: 'receipt', conversation_id: state.conv.id, status: 'read', seq: state.maxSeq });
  }

  function onReceipt(f) {
    if (!state.conv || f.conversation_id !== state.conv.id || f.status !== 'read' || f.role !== 'advisor') return;
    const seq = Number(f.seq) || 0;
    if (seq <= state.readSeq) return;
    state.readSeq = seq;
    for (const [s, node] of state.nodes) if (s <= seq && isOwn(state.messages.get(s))) markRead(node);
  }

  /** While the user types: typing:true at most every few seconds; false after a pause, on send, on blur. */
  function onComposerInput() {
    autoGrow();
    if (!dom.composer.value.trim()) { stopTyping(); return; }
    if (!state.typingActive || Date.now() - state.typingSentAt > TYPING_THROTTLE_MS) sendTyping(true);
    later('typingIdle', TYPING_IDLE_MS, stopTyping);
  }

  function stopTyping() {
    clearTimer('typingIdle');
    if (state.typingActive) sendTyping(false);
  }

  function sendTyping(active) {
    state.typingActive = active;
    state.typingSentAt = Date.now();
    if (state.wsReady && state.conv && !state.closed) wsSend({ type: 'typing', conversation_id: state.conv.id, active });
  }

  function onRemoteTyping(f) {
    if (!state.conv || f.conversation_id !== state.conv.id || f.role === 'client' || f.participant_id === state.participantId) return;
    if (!f.active) { setRemoteTyping(null); return; }
    const name = state.advisorNames.get(f.participant_id);
    setRemoteTyping(name ? t('typingNamed', { name }) : t('typingAnon'));
  }

  /** Shows "Advisor … is typing…" (cleared after a few seconds without news), or hides it (null). */
  function setRemoteTyping(label) {
    clearTimer('remoteTyping');
    if (!dom.typing) return;
    dom.typing.hidden = !label;
    dom.typingText.textContent = label || '';
    if (label) later('remoteTyping', REMOTE_TYPING_MS, () => setRemoteTyping(null));
  }

  // ───────────────────────────── handoff ─────────────────────────────

  function handoffFromMode(mode) {
    const status = { bot: 'bot', queued: 'queued', human: 'advisor', closed: 'closed' }[mode] || 'bot';
    return { status, position: null, expected_wait_secs: null, advisor: null, escalated: false };
  }

  const canAskAdvisor = () => !!state.conv && !state.closed && (!state.handoff || state.handoff.status === 'bot') && !state.askInFlight;

  async function refreshHandoff() {
    if (!state.conv || !state.token) return;
    const convId = state.conv.id;
    try {
      const h = await api('GET', `/v1/conversations/${enc(convId)}/handoff`);
      if (state.conv && state.conv.id === convId) applyHandoff(h);
    } catch (err) {
      if (err.status === 401 || err.status === 0) return;
      // No handoff state to read: fall back to the conversation's mode.
      try {
        const conv = await api('GET', `/v1/conversations/${enc(convId)}`);
        if (state.conv && state.conv.id === convId && conv.mode) applyHandoff(handoffFromMode(conv.mode));
      } catch (_) { /* keep what is shown */ }
    }
  }

  /** Remembers an advisor's display name and puts it on messages already shown. */
  function learnAdvisorName(advisor) {
    const name = advisor.name || advisor.id;
    if (state.advisorNames.get(advisor.id) === name) return;
    state.advisorNames.set(advisor.id, name);
    for (const [seq, node] of state.nodes) {
      const m = state.messages.get(seq);
      const label = node.querySelector('.msg--advisor .sender-name');
      if (label && m.sender && m.sender.id === advisor.id) label.textContent = name;
    }
  }

  /** Shows what a system handoff event implies at once; GET …/handoff then confirms it. */
  function applyHandoffEvent(h) {
    const status = { queued: 'queued', escalated: 'queued', joined: 'advisor', transferred: 'advisor', returned: 'bot', closed: 'closed' }[h.event];
    if (!status) return;
    const prev = state.handoff || {};
    applyHandoff({
      status,
      position: h.position !== undefined ? h.position : status === prev.status ? prev.position : null,
      expected_wait_secs: h.expected_wait_secs !== undefined ? h.expected_wait_secs : status === prev.status ? prev.expected_wait_secs : null,
      escalated: h.event === 'escalated' || (status === 'queued' && !!prev.escalated),
      advisor: h.advisor || (status === 'advisor' ? prev.advisor : null),
    });
  }

  function scheduleHandoffRefresh() { later('handoff', 250, refreshHandoff); }

  function applyHandoff(h) {
    if (!h || !h.status) return;
    state.handoff = h;
    if (h.advisor && h.advisor.id) learnAdvisorName(h.advisor);
    if (h.status === 'closed') setClosed(true);
    if (h.status === 'queued') startQueuePolling(); else stopQueuePolling();
    renderHandoffBanner();
    updateAskButtons();
    scheduleQuestionUpdate();
  }

  /** The banner text: queue position and wait, advisor joined/left, closed. */
  function handoffText(h) {
    switch (h.status) {
      case 'queued': {
        const p = h.position;
        const m = h.expected_wait_secs !== null && h.expected_wait_secs !== undefined ? Math.max(1, Math.ceil(h.expected_wait_secs / 60)) : null;
        let s = p && m ? t('status_queued', { p, m }) : p ? t('status_queuedPos', { p }) : t('status_queuedAny');
        if (h.escalated) s += ` · ${t('status_priority')}`;
        return s;
      }
      case 'advisor': {
        const name = h.advisor && (h.advisor.name || h.advisor.id);
        return name ? t('status_advisor', { name }) : t('status_advisorAnon');
      }
      case 'closed': return t('status_closed');
      default: return state.lastHandoffEvent === 'returned' ? t('status_botBack') : t('status_bot');
    }
  }

  function renderHandoffBanner() {
    const h = state.handoff;
    if (!h) return;
    dom.handoff.dataset.status = h.status;
    const text = handoffText(h);
    if (dom.handoffText.textContent !== text) dom.handoffText.textContent = text; // no re-announcement
  }

  function updateAskButtons() {
    const enabled = canAskAdvisor();
    dom.ask.disabled = !enabled;
    dom.ask.hidden = state.closed;
    for (const b of dom.messages.querySelectorAll('.js-ask')) b.disabled = !enabled;
  }

  function startQueuePolling() {
    if (state.timers.queue) return;
    state.timers.queue = setInterval(refreshHandoff, QUEUE_POLL_MS);
  }

  function stopQueuePolling() { clearTimer('queue'); }

  /** "Talk to an advisor": joins the queue; an existing request is reported gently. */
  async function requestAdvisor() {
    if (!canAskAdvisor()) return;
    const convId = state.conv.id;
    state.askInFlight = true;
    updateAskButtons();
    try {
      const h = await api('POST', `/v1/conversations/${enc(convId)}/handoff`, {});
      if (state.conv && state.conv.id === convId) applyHandoff(h && h.status ? h : { status: 'queued' });
    } catch (err) {
      if (err.code === 'handoff_pending') showToast(t('alreadyQueued'), 'info');
      else if (err.status !== 401) showToast(err.message);
      refreshHandoff();
    } finally {
      state.askInFlight = false;
      updateAskButtons();
    }
  }

  /** A closed conversation: no composer, a "New conversation" button instead. */
  function setClosed(closed) {
    state.closed = closed;
    dom.composerForm.hidden = closed;
    dom.closedBar.hidden = !closed;
    if (closed) { stopTyping(); dropDrafts(); setRemoteTyping(null); stopQueuePolling(); }
    updateWelcome();
    updateAskButtons();
    scheduleQuestionUpdate();
  }

  // ───────────────────────────── source panel ─────────────────────────────

  /** Opens the cited document, at the version that was cited, in a modal panel. */
  async function openSource(citation, opener) {
    state.sourceOpener = opener;
    const request = ++state.sourceRequest;
    dom.sourceTitle.textContent = localized(citation.title) || citation.doc_id;
    dom.sourceMeta.textContent = citation.section || '';
    dom.sourceBody.replaceChildren(el('p', { class: 'source-loading', text: t('sourceLoading') }));
    dom.sourceBody.setAttribute('aria-busy', 'true');
    dom.sourcePanel.hidden = false;
    dom.sourceBackdrop.hidden = false;
    dom.app.inert = true;
    document.body.classList.add('has-dialog');
    dom.sourceClose.focus();
    try {
      const query = citation.version_hash ? `?version=${enc(citation.version_hash)}` : '';
      const doc = await api('GET', `/v1/knowledge/documents/${enc(citation.doc_id)}${query}`);
      if (request === state.sourceRequest && !dom.sourcePanel.hidden) renderSource(doc, citation);
    } catch (err) {
      if (request === state.sourceRequest) dom.sourceBody.replaceChildren(el('p', { class: 'source-error', text: err.message }));
    } finally {
      if (request === state.sourceRequest) dom.sourceBody.removeAttribute('aria-busy');
    }
  }

  function renderSource(doc, citation) {
    const meta = [doc.doc_id || citation.doc_id];
    if (doc.version_hash) meta.push(t('sourceVersion', { v: String(doc.version_hash).slice(0, 10) }));
    if (citation.section) meta.push(citation.section);
    dom.sourceMeta.textContent = meta.join(' · ');
    const parts = [];
    if (doc.current === false || doc.retired_at) parts.push(el('p', { class: 'source-note', text: t('sourceOlder') }));
    parts.push(renderMarkdown(String(doc.source || '')));
    dom.sourceBody.replaceChildren(...parts);
    dom.sourceBody.scrollTop = 0;
    highlightSection(citation.section);
  }

  /** Marks and scrolls to the heading of the cited section. */
  function highlightSection(section) {
    const wanted = String(section || '').trim().toLowerCase();
    if (!wanted) return;
    const headings = [...dom.sourceBody.querySelectorAll('h3, h4')];
    const hit = headings.find((h) => h.textContent.trim().toLowerCase() === wanted)
      || headings.find((h) => h.textContent.toLowerCase().includes(wanted) || wanted.includes(h.textContent.trim().toLowerCase()));
    if (!hit) return;
    hit.classList.add('is-cited');
    dom.sourceBody.scrollTop = Math.max(0, hit.offsetTop - 8); // .source-body is the offsetParent
  }

  /**
   * A small, safe Markdown reader for the knowledge documents: front matter is dropped;
   * headings, lists, tables and paragraphs become elements; all text via textContent.
   */
  function renderMarkdown(source) {
    const root = el('div', { class: 'md' });
    const text = source.replace(/^\s*(\+\+\+|---)\r?\n[\s\S]*?\r?\n\1\s*(\r?\n|$)/, '');
    let paragraph = [];
    let list = null;
    let table = null;
    const flush = () => {
      if (paragraph.length) root.append(el('p', {}, inline(paragraph.join(' '))));
      paragraph = [];
      list = null;
      table = null;
    };
    for (const line of text.split(/\r?\n/)) {
      const heading = /^(#{1,6})\s+(.*)$/.exec(line);
      const bullet = /^\s*(?:[-*+]|(\d+)[.)])\s+(.*)$/.exec(line);
      if (!line.trim()) { flush(); continue; }
      if (heading) { flush(); root.append(el(heading[1].length <= 2 ? 'h3' : 'h4', {}, inline(heading[2]))); continue; }
      if (/^\s*\|/.test(line)) {
        if (paragraph.length || list) flush();
        if (/^\s*\|?[\s:|-]+\|?\s*$/.test(line)) continue; // the |---|---| separator
        const cells = line.trim().replace(/^\||\|$/g, '').split('|').map((c) => c.trim());
        if (!table) { table = el('table', { class: 'md-table' }); root.append(el('div', { class: 'table-wrap' }, [table])); }
        const cellTag = table.rows.length === 0 ? 'th' : 'td';
        table.append(el('tr', {}, cells.map((c) => el(cellTag, {}, inline(c)))));
        continue;
      }
      if (bullet) {
        if (paragraph.length || table) flush();
        const tag = bullet[1] ? 'ol' : 'ul';
        if (!list || list.tagName.toLowerCase() !== tag) { list = el(tag); root.append(list); }
        list.append(el('li', {}, inline(bullet[2])));
        continue;
      }
      if (list && /^\s{2,}/.test(line)) { list.lastChild.append(' ', ...inline(line.trim())); continue; }
      list = null;
      table = null;
      paragraph.push(line.trim());
    }
    flush();
    return root;
  }

  /** **bold** and `code` inside a line; everything else stays plain text. */
  function inline(text) {
    return String(text).split(/(\*\*[^*]+\*\*|`[^`]+`)/).filter(Boolean).map((part) => {
      if (/^\*\*[^*]+\*\*$/.test(part)) return el('strong', { text: part.slice(2, -2) });
      if (/^`[^`]+`$/.test(part)) return el('code', { text: part.slice(1, -1) });
      return document.createTextNode(part);
    });
  }

  function closeSource() {
    if (dom.sourcePanel.hidden) return;
    state.sourceRequest += 1;
    dom.sourcePanel.hidden = true;
    dom.sourceBackdrop.hidden = true;
    dom.app.inert = false;
    document.body.classList.remove('has-dialog');
    const opener = state.sourceOpener;
    state.sourceOpener = null;
    if (opener && opener.isConnected) opener.focus();
  }

  /** Esc closes; Tab and Shift+Tab stay inside the panel. */
  function onSourceKeydown(e) {
    if (e.key === 'Escape') { e.preventDefault(); closeSource(); return; }
    if (e.key !== 'Tab') return;
    const focusable = [...dom.sourcePanel.querySelectorAll('button, [href], [tabindex]:not([tabindex="-1"])')].filter((n) => !n.disabled && n.offsetParent !== null);
    if (!focusable.length) return;
    const first = focusable[0];
    const last = focusable[focusable.length - 1];
    if (e.shiftKey && document.activeElement === first) { e.preventDefault(); last.focus(); }
    else if (!e.shiftKey && document.activeElement === last) { e.preventDefault(); first.focus(); }
  }

  // ───────────────────────────── WebSocket ─────────────────────────────

  function connectSocket() {
    clearTimer('reconnect');
    if (!state.token) return;
    if (tokenExpired()) { signOut(t('expired')); return; }
    if (!navigator.onLine) { setConnection('offline'); return; }
    setConnection(state.attempt === 0 ? 'connecting' : 'reconnecting');
    const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
    let ws;
    try {
      ws = new WebSocket(`${scheme}//${location.host}/v1/im/ws?access_token=${enc(state.token)}`);
    } catch (_) {
      scheduleReconnect(false);
      return;
    }
    state.ws = ws;
    state.wsReady = false;
    ws.addEventListener('message', (e) => { if (state.ws === ws) onFrame(e.data); });
    ws.addEventListener('close', (e) => { if (state.ws === ws) onSocketClosed(e.code); });
  }

  function wsSend(frame) {
    if (!state.ws || state.ws.readyState !== WebSocket.OPEN) return false;
    state.ws.send(JSON.stringify(frame));
    return true;
  }

  /** Closes the socket on purpose (no reconnect). */
  function closeSocket() {
    const ws = state.ws;
    state.ws = null;
    state.wsReady = false;
    clearTimer('heartbeat');
    clearTimer('reconnect');
    if (ws) try { ws.close(1000); } catch (_) { /* already closed */ }
  }

  function onSocketClosed(code) {
    state.ws = null;
    state.wsReady = false;
    state.typingActive = false;
    clearTimer('heartbeat');
    setRemoteTyping(null);
    if (code === 4001) { signOut(t('expired')); return; }
    if (state.token) scheduleReconnect(code === 4029);
  }

  /** Exponential backoff, 0.5 s doubling to 10 s, with jitter; HTTP keeps the chat current meanwhile. */
  function scheduleReconnect(flooded) {
    clearTimer('reconnect');
    if (!navigator.onLine) { setConnection('offline'); return; }
    const base = flooded ? BACKOFF_MAX_MS : Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** state.attempt);
    const delay = Math.min(BACKOFF_MAX_MS, base * (0.75 + Math.random() * 0.5));
    state.attempt += 1;
    setConnection('reconnecting');
    if (state.attempt >= 3) syncMessages(); // also notices a revoked token (401 → sign-in)
    later('reconnect', delay, connectSocket);
  }

  /** If nothing arrives for a while the connection is dead: drop it and reconnect. */
  function startHeartbeat() {
    clearTimer('heartbeat');
    state.pingSentAt = 0;
    state.timers.heartbeat = setInterval(() => {
      // Dead when our last ping got no frame at all back within a heartbeat (min 10 s).
      const waited = Date.now() - state.pingSentAt;
      if (state.pingSentAt && state.lastFrameAt < state.pingSentAt && waited > Math.max(10000, state.heartbeatSecs * 1000)) {
        const ws = state.ws;
        state.ws = null;
        try { ws && ws.close(); } catch (_) { /* ignore */ }
        onSocketClosed(1006);
        return;
      }
      if (!state.pingSentAt || state.lastFrameAt >= state.pingSentAt) {
        state.pingSentAt = Date.now();
        wsSend({ type: 'ping' });
      }
    }, state.heartbeatSecs * 1000);
  }

  function onFrame(data) {
    let f;
    try { f = JSON.parse(data); } catch (_) { return; }
    if (!f || typeof f !== 'object') return;
    state.lastFrameAt = Date.now();
    switch (f.type) {
      case 'hello': onHello(f); break;
      case 'message': ingestMessage(f.message); break;
      case 'ack': state.frames.delete(f.id); onAck(f); break;
      case 'stream': onStream(f); break;
      case 'receipt': onReceipt(f); break;
      case 'typing': onRemoteTyping(f); break;
      case 'subscribed': onSubscribed(f); break;
      case 'error': onSocketError(f); break;
      default: break; // pong, presence, queue: nothing to do here
    }
  }

  function onHello(f) {
    if (f.role && f.role !== 'client') { signOut(t('wrongRole')); return; }
    state.wsReady = true;
    state.attempt = 0;
    state.participantId = f.participant_id || (state.claims && state.claims.sub);
    state.heartbeatSecs = Math.max(5, Number(f.heartbeat_secs) || 20);
    setConnection('online');
    startHeartbeat();
    if (state.conv) {
      onConversationReady();
      scheduleHandoffRefresh();
    }
  }

  /** Makes sure the socket delivers this conversation from our last seq on. */
  function subscribeConversation() {
    if (!state.conv || state.closed) return;
    const id = nextFrameId();
    state.frames.set(id, { type: 'subscribe' });
    wsSend({ type: 'subscribe', id, conversation_id: state.conv.id, after_seq: state.lastSeq });
  }

  /** The server will replay up to last_seq; if that does not arrive soon, fetch it. */
  function onSubscribed(f) {
    state.frames.delete(f.id);
    if (!state.conv || f.conversation_id !== state.conv.id) return;
    state.behindSeq = Math.max(state.behindSeq, Number(f.last_seq) || 0);
    later('catchUp', 2000, () => { if (state.lastSeq < state.behindSeq) syncMessages(); });
  }

  function onSocketError(f) {
    const origin = f.id ? state.frames.get(f.id) : null;
    if (f.id) state.frames.delete(f.id);
    if (origin && origin.type === 'send') {
      const p = state.pending.get(origin.cmid);
      if (!p) return;
      if (f.code === 'rate_limited' || f.code === 'internal') { p.sentAt = Date.now() - RESEND_AFTER_MS + 3000; return; }
      failSend(p, f.code, f.message);
      return;
    }
    if (origin && origin.type === 'subscribe') {
      if (f.code === 'conversation_closed') refreshHandoff();
      else showToast(f.message);
      return;
    }
    if (f.code === 'conversation_closed') { refreshHandoff(); return; }
    console.warn('socket error', f.code, f.message);
  }

  // ───────────────────────────── composer ─────────────────────────────

  function autoGrow() {
    const c = dom.composer;
    c.style.height = 'auto';
    c.style.height = `${Math.min(c.scrollHeight, 160)}px`;
  }

  function submitComposer() {
    const text = dom.composer.value;
    if (!text.trim()) { dom.composer.focus(); return; }
    if (sendMessage(text)) {
      dom.composer.value = '';
      autoGrow();
      stopTyping();
    }
  }

  /** Enter sends, Shift+Enter is a new line; never while an IME is composing (pinyin). */
  function onComposerKeydown(e) {
    if (e.key !== 'Enter' || e.shiftKey || e.isComposing || e.keyCode === 229) return;
    e.preventDefault();
    submitComposer();
  }

  // ───────────────────────────── start-up ─────────────────────────────

  function bindDom() {
    Object.assign(dom, {
      app: $('app'), main: $('main'), messages: $('messages'), welcome: $('welcome'), suggestions: $('suggestions'),
      statusbar: $('statusbar'), handoff: document.querySelector('[data-testid="handoff-status"]'), handoffText: $('handoff-text'),
      ask: $('ask-advisor'), footer: $('footer'), composerForm: $('composer-form'), composer: $('composer'),
      closedBar: $('closed-bar'), typing: $('typing'), typingText: $('typing-text'), jump: $('jump-latest'),
      connection: document.querySelector('[data-testid="connection"]'), connectionLabel: $('connection-label'),
      langToggle: $('lang-toggle'), tokenInput: $('token-input'),
      toast: $('toast'), error: $('error'),
      sourcePanel: $('source-panel'), sourceBackdrop: $('source-backdrop'), sourceTitle: $('source-title'),
      sourceMeta: $('source-meta'), sourceBody: $('source-body'), sourceClose: $('source-close'),
    });
  }

  function bindEvents() {
    $('signin-form').addEventListener('submit', (e) => { e.preventDefault(); signIn(dom.tokenInput.value); });
    $('retry-load').addEventListener('click', loadConversations);
    document.querySelectorAll('.lang-btn').forEach((b) => b.addEventListener('click', () => startConversation(b.dataset.lang, b)));
    $('new-conversation').addEventListener('click', () => showStart(true));
    dom.ask.addEventListener('click', requestAdvisor);
    dom.langToggle.addEventListener('click', () => {
      state.langChosen = true;
      const next = state.lang === 'zh-CN' ? 'en' : 'zh-CN';
      sessionStorage.setItem(KEY_LANG, next);
      setLang(next);
    });
    dom.composerForm.addEventListener('submit', (e) => { e.preventDefault(); submitComposer(); });
    dom.composer.addEventListener('keydown', onComposerKeydown);
    dom.composer.addEventListener('input', onComposerInput);
    dom.composer.addEventListener('blur', stopTyping);
    dom.main.addEventListener('scroll', () => { if (isNearBottom()) dom.jump.hidden = true; }, { passive: true });
    dom.jump.addEventListener('click', () => { scrollToBottom(); dom.composer.focus(); });
    $('toast-close').addEventListener('click', hideToast);
    dom.sourceClose.addEventListener('click', closeSource);
    dom.sourceBackdrop.addEventListener('click', closeSource);
    dom.sourcePanel.addEventListener('keydown', onSourceKeydown);
    document.addEventListener('visibilitychange', () => {
      if (document.visibilityState === 'visible') { scheduleReceipt(); if (state.conv) { syncMessages(); scheduleHandoffRefresh(); } }
    });
    window.addEventListener('hashchange', () => { const token = takeTokenFromFragment(); if (token) signIn(token); });
    window.addEventListener('online', () => { if (state.token && !state.ws) { state.attempt = 0; connectSocket(); } });
    window.addEventListener('offline', () => { if (!state.wsReady) setConnection('offline'); });
  }

  function init() {
    bindDom();
    bindEvents();
    const savedLang = sessionStorage.getItem(KEY_LANG);
    if (savedLang) state.langChosen = true;
    setLang(savedLang || state.lang);
    const token = takeTokenFromFragment() || sessionStorage.getItem(KEY_TOKEN);
    if (token) signIn(token);
    else showSignIn();
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', init);
  else init();
})();
