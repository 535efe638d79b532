'use strict';
/* wealthdesk advisor console: queue, live conversations, handoff packet. */
(() => {
  // ---------------------------------------------------------------- strings
  const I18N = {
    en: {
      console: 'Advisor console', skip: 'Skip to conversation',
      signinTitle: 'Sign in to the advisor console',
      signinHelp: 'Paste the access token issued to you by the bank’s identity service.',
      tokenLabel: 'Access token', signIn: 'Sign in', signOut: 'Sign out',
      tokenInvalid: 'This token could not be read. Check that you pasted all of it.',
      tokenExpired: 'Your session has expired. Please sign in again.',
      wrongRole: 'This console is for advisors; the token you used is for the role “{role}”.',
      statusLabel: 'Presence', status_online: 'Online', status_away: 'Away', status_offline: 'Offline',
      conn_connecting: 'Connecting…', conn_online: 'Live', conn_reconnecting: 'Reconnecting…', conn_offline: 'Offline',
      load: '{active}/{capacity} conversations',
      queue: 'Queue', advisorsOnline: '{n} advisors online', queueEmpty: 'No clients are waiting.',
      prio_urgent: 'Urgent', prio_high: 'High', prio_normal: 'Normal', escalated: 'Escalated',
      waiting: 'Waiting {t}', slaIn: 'SLA in {t}', slaBreached: 'SLA breached {t} ago', slaBreachedShort: 'SLA breached',
      notEligible: 'Outside your languages or skills ({detail}); claimable once the SLA is breached.',
      claim: 'Claim', claiming: 'Claiming…', open: 'Open', claimLabel: 'Claim the conversation with {name}',
      claimed: 'You are now with {name}.', newInQueue: 'New in the queue: {name}, {reason}',
      conversations: 'Conversations', noConversation: 'No open conversation',
      noConversationHelp: 'Claim a client from the queue to start. Conversations you own reopen here automatically.',
      transfer: 'Transfer…', returnBot: 'Return to bot…', close: 'Close…',
      replyTo: 'Reply to {name}', replyPlaceholder: 'Write a reply…',
      composerHint: 'Enter to send · Shift+Enter for a new line', send: 'Send',
      sending: 'Sending…', queued: 'Waiting for the connection…', notSent: 'Not sent: {msg}', retry: 'Retry',
      read: 'Read', clientTyping: '{name} is typing…',
      role_client: 'Client', role_bot: 'Assistant', role_advisor: 'Advisor', you: 'you',
      mode_llm: 'AI assistant', mode_offline: 'Offline mode — answers quote our documents',
      questionOf: 'Question {i} of {n}', optionsShown: 'Options shown to the client',
      previousAnswer: 'Previous answer',
      assessmentResult: 'Risk assessment result', level: 'Level', category: 'Category',
      maxProduct: 'Highest product risk', expires: 'Expires', assessed: 'Assessed', status: 'Status',
      riskDisclosure: 'Risk disclosure', disc_risk_warning: 'Risk warning', disc_past_performance: 'Past performance is no guide to the future',
      productsShown: 'Products presented', suitable: 'Suitable for the client’s profile',
      notSuitable: 'Not suitable for the client’s profile', guardrail: 'Guardrail: {rule}',
      offeredAdvisor: 'The assistant offered a human advisor', questionnaireAnswer: 'Questionnaire answer',
      sources: 'Sources',
      ev_queued: 'Client joined the queue', ev_escalated: 'Escalated', ev_joined: 'Advisor joined',
      ev_transferred: 'Transferred', ev_returned: 'Returned to the bot', ev_closed: 'Closed',
      packet: 'Handoff packet', packetEmpty: 'Select a conversation to see its handoff packet.',
      packetUnavailable: 'The handoff packet could not be loaded.', reload: 'Reload',
      pk_reason: 'Reason for handoff', pk_summary: 'Summary', pk_profile: 'Risk profile',
      pk_products: 'Products shown', pk_citations: 'Documents cited', pk_guardrails: 'Guardrail hits',
      pk_events: 'Handoff history and notes',
      summary_llm: 'AI summary', summary_extractive: 'Extractive summary',
      summaryCheck: 'Check against the transcript before relying on it.',
      requested: 'Requested', waited: 'Waited', language: 'Language',
      noProfile: 'No risk profile on file.', valid: 'Valid', expired: 'Expired',
      answersN: 'Questionnaire answers ({n})', noProducts: 'No products were shown.',
      noCitations: 'No documents cited.', noGuardrails: 'No guardrail hits.', noEvents: 'No events yet.',
      noteFrom: 'Note from {name}', goTo: 'Go to message {seq}',
      transferTitle: 'Transfer conversation',
      transferHelp: 'Only colleagues who are online and have free capacity can receive it.',
      transferTo: 'Colleague', transferNote: 'Note for your colleague', transferConfirm: 'Transfer',
      noColleague: 'No colleague is available right now', loading: 'Loading…', cancel: 'Cancel',
      full: 'full', transferredTo: 'Conversation transferred to {name}.',
      returnTitle: 'Return to the bot',
      returnHelp: 'The client continues with the AI assistant. Add a note for the record if useful.',
      returnNote: 'Note (optional)', returnConfirm: 'Return to bot', returnedDone: 'Conversation returned to the bot.',
      closeTitle: 'Close conversation', closeHelp: 'The client is told the conversation has ended.',
      disposition: 'Disposition', disp_resolved: 'Resolved', disp_follow_up: 'Follow-up needed',
      disp_referred: 'Referred', disp_no_response: 'No response from client', disp_complaint_logged: 'Complaint logged',
      closeNote: 'Note (optional)', closeConfirm: 'Close conversation', closedDone: 'Conversation closed: {disposition}.',
      endedBanner: 'This conversation is no longer assigned to you ({status}).', closeTab: 'Close tab',
      unreadN: '{n} unread', newMessageFrom: 'New message from {name}',
      sourceTitle: 'Source document', closeBtn: 'Close', version: 'version {v}', retired: 'retired',
      networkError: 'Network error — check your connection.', httpError: 'The request failed ({status}).',
      tooLong: 'The message is too long.', dismiss: 'Dismiss', messagesWith: 'Messages with {name}',
      lang_en: 'English', 'lang_zh-CN': 'Chinese', convShort: 'Conversation {id}',
      dir_input: 'client message', dir_output: 'assistant reply', dir_advisor: 'advisor message',
    },
    'zh-CN': {
      console: '顾问工作台', skip: '跳到对话',
      signinTitle: '登录顾问工作台', signinHelp: '请粘贴银行身份服务为您签发的访问令牌。',
      tokenLabel: '访问令牌', signIn: '登录', signOut: '退出登录',
      tokenInvalid: '无法读取该令牌，请确认已完整粘贴。', tokenExpired: '登录已过期，请重新登录。',
      wrongRole: '此工作台仅供顾问使用；您使用的令牌角色为“{role}”。',
      statusLabel: '在线状态', status_online: '在线', status_away: '离开', status_offline: '离线',
      conn_connecting: '正在连接…', conn_online: '已连接', conn_reconnecting: '正在重连…', conn_offline: '已断开',
      load: '{active}/{capacity} 个会话',
      queue: '排队', advisorsOnline: '{n} 位顾问在线', queueEmpty: '暂无客户排队。',
      prio_urgent: '紧急', prio_high: '高', prio_normal: '普通', escalated: '已升级',
      waiting: '已等待 {t}', slaIn: 'SLA 剩余 {t}', slaBreached: '已超出 SLA {t}', slaBreachedShort: '已超出 SLA',
      notEligible: '不在您的语言或技能范围内（{detail}）；超出 SLA 后可接入。',
      claim: '接入', claiming: '正在接入…', open: '打开', claimLabel: '接入与 {name} 的会话',
      claimed: '您已接入 {name} 的会话。', newInQueue: '新客户排队：{name}，{reason}',
      conversations: '会话', noConversation: '暂无进行中的会话',
      noConversationHelp: '请从左侧排队中接入客户。您负责的会话会自动在此重新打开。',
      transfer: '转接…', returnBot: '交回机器人…', close: '结束…',
      replyTo: '回复 {name}', replyPlaceholder: '输入回复…',
      composerHint: 'Enter 发送 · Shift+Enter 换行', send: '发送',
      sending: '发送中…', queued: '等待连接…', notSent: '未发送：{msg}', retry: '重试',
      read: '已读', clientTyping: '{name} 正在输入…',
      role_client: '客户', role_bot: '智能助手', role_advisor: '顾问', you: '您',
      mode_llm: 'AI 助手', mode_offline: '离线模式 — 回答引用我们的资料',
      questionOf: '第 {i} 题，共 {n} 题', optionsShown: '客户看到的选项', previousAnswer: '上次的回答',
      assessmentResult: '风险测评结果', level: '等级', category: '类型',
      maxProduct: '可购买的最高产品风险', expires: '有效期至', assessed: '测评时间', status: '状态',
      riskDisclosure: '风险提示', disc_risk_warning: '风险警示', disc_past_performance: '过往业绩不预示未来表现',
      productsShown: '展示的产品', suitable: '符合客户的风险等级', notSuitable: '不符合客户的风险等级',
      guardrail: '合规规则：{rule}', offeredAdvisor: '助手已建议转人工顾问', questionnaireAnswer: '测评答案',
      sources: '资料来源',
      ev_queued: '客户进入排队', ev_escalated: '已升级', ev_joined: '顾问已接入',
      ev_transferred: '已转接', ev_returned: '已交回机器人', ev_closed: '已结束',
      packet: '交接资料', packetEmpty: '选择一个会话以查看交接资料。',
      packetUnavailable: '无法加载交接资料。', reload: '重新加载',
      pk_reason: '转人工原因', pk_summary: '摘要', pk_profile: '风险测评', pk_products: '展示的产品',
      pk_citations: '引用的资料', pk_guardrails: '合规规则命中', pk_events: '交接记录与备注',
      summary_llm: 'AI 摘要', summary_extractive: '摘录摘要', summaryCheck: '请对照对话记录核实后再使用。',
      requested: '申请时间', waited: '等待时长', language: '语言',
      noProfile: '暂无风险测评记录。', valid: '有效', expired: '已过期',
      answersN: '测评答案（{n}）', noProducts: '未展示产品。', noCitations: '未引用资料。',
      noGuardrails: '无规则命中。', noEvents: '暂无记录。',
      noteFrom: '{name} 的备注', goTo: '跳到第 {seq} 条消息',
      transferTitle: '转接会话', transferHelp: '只能转给在线且有空余容量的同事。',
      transferTo: '同事', transferNote: '给同事的备注', transferConfirm: '转接',
      noColleague: '目前没有可接收的同事', loading: '加载中…', cancel: '取消',
      full: '已满', transferredTo: '会话已转接给 {name}。',
      returnTitle: '交回机器人', returnHelp: '客户将继续与 AI 助手对话。如有需要请留下备注。',
      returnNote: '备注（可选）', returnConfirm: '交回机器人', returnedDone: '会话已交回机器人。',
      closeTitle: '结束会话', closeHelp: '客户会收到会话已结束的通知。',
      disposition: '处理结果', disp_resolved: '已解决', disp_follow_up: '需跟进', disp_referred: '已转介',
      disp_no_response: '客户无回应', disp_complaint_logged: '已登记投诉',
      closeNote: '备注（可选）', closeConfirm: '结束会话', closedDone: '会话已结束：{disposition}。',
      endedBanner: '此会话已不再由您负责（{status}）。', closeTab: '关闭标签',
      unreadN: '{n} 条未读', newMessageFrom: '{name} 发来新消息',
      sourceTitle: '资料原文', closeBtn: '关闭', version: '版本 {v}', retired: '已停用',
      networkError: '网络错误，请检查网络连接。', httpError: '请求失败（{status}）。',
      tooLong: '消息过长。', dismiss: '关闭', messagesWith: '与 {name} 的消息',
      lang_en: '英文', 'lang_zh-CN': '中文', convShort: '会话 {id}',
      dir_input: '客户消息', dir_output: '助手回复', dir_advisor: '顾问消息',
    },
  };
  let LANG = 'en';

  function t(key, vars) {
    const table = I18N[LANG] || I18N.en;
    let s = table[key] ?? I18N.en[key] ?? key;
    if (vars) s = s.replace(/\{(\w+)\}/g, (m, k) => (vars[k] ?? m));
    return s;
  }

  function pickLang(tag) {
    return String(tag || '').toLowerCase().startsWith('zh') ? 'zh-CN' : 'en';
  }

  function applyStaticI18n() {
    document.documentElement.lang = LANG;
    document.title = `${t('console')} · wealthdesk`;
    for (const node of document.querySelectorAll('[data-i18n]')) node.textContent = t(node.dataset.i18n);
    for (const node of document.querySelectorAll('[data-i18n-attr]')) {
      for (const pair of node.dataset.i18nAttr.split(';')) {
        const [attr, key] = pair.split(':');
        if (attr && key) node.setAttribute(attr, t(key));
      }
    }
  }

  // ---------------------------------------------------------------- state
  const TOKEN_KEY = 'wealthdesk.advisor.token';
  const ACTIVE_KEY = 'wealthdesk.advisor.active';
  const ENDING_EVENTS = new Set(['transferred', 'returned', 'closed']);
  const S = {
    token: null, claims: null, me: null, inConsole: false, stopped: false,
    colleagues: new Map(),
    queue: [], queueAt: 0, queueRows: new Map(), queueKnown: null, queueBusy: false, queueAgain: false,
    convs: new Map(), order: [], activeId: null, syncing: false, syncAgain: false,
    ws: null, wsReady: false, attempt: 0, everConnected: false, reconnectTimer: null, pingTimer: null,
  };

  // ---------------------------------------------------------------- helpers
  const $ = (id) => document.getElementById(id);
  const enc = encodeURIComponent;

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v == null || v === false) continue;
      if (k === 'class') node.className = v;
      else if (k === 'text') node.textContent = String(v);
      else if (k.startsWith('on') && typeof v === 'function') node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v === true ? '' : String(v));
    }
    for (const c of children.flat()) {
      if (c == null || c === false) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }

  function newId(prefix) {
    const bytes = new Uint8Array(9);
    crypto.getRandomValues(bytes);
    return prefix + Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
  }

  function fmtDur(secs) {
    const s = Math.max(0, Math.floor(secs));
    const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
    return h ? `${h}:${String(m).padStart(2, '0')}:${String(r).padStart(2, '0')}` : `${m}:${String(r).padStart(2, '0')}`;
  }

  function fmtTime(iso) {
    const d = new Date(iso);
    return isNaN(d) ? '' : d.toLocaleTimeString(LANG, { hour: '2-digit', minute: '2-digit' });
  }

  function fmtDateTime(iso) {
    const d = new Date(iso);
    return isNaN(d) ? (iso ? String(iso) : '—') : d.toLocaleString(LANG, { dateStyle: 'medium', timeStyle: 'short' });
  }

  function langName(code) { return code ? t('lang_' + code) : ''; }
  function myId() { return (S.me && S.me.id) || (S.claims && S.claims.sub) || ''; }
  function activeConv() { return S.activeId ? S.convs.get(S.activeId) || null : null; }
  function advisorName(id) {
    if (id === myId()) return (S.me && S.me.name) || (S.claims && S.claims.name) || id;
    const a = S.colleagues.get(id);
    return (a && a.name) || id || '';
  }

  function announce(text) {
    const node = $('announcer');
    node.textContent = '';
    setTimeout(() => { node.textContent = text; }, 50);
  }

  let errorTimer = null;
  function showError(errOrText) {
    const text = typeof errOrText === 'string' ? errOrText : (errOrText && errOrText.message) || t('networkError');
    $('error-toast').hidden = false;
    $('error-text').textContent = text;
    clearTimeout(errorTimer);
    errorTimer = setTimeout(hideError, 12000);
  }
  function hideError() { $('error-toast').hidden = true; $('error-text').textContent = ''; }

  let infoTimer = null;
  function showInfo(text) {
    const node = $('info-toast');
    node.hidden = false;
    node.textContent = text;
    clearTimeout(infoTimer);
    infoTimer = setTimeout(() => { node.hidden = true; node.textContent = ''; }, 5000);
  }

  // ---------------------------------------------------------------- auth
  function readToken() {
    const m = /(?:^#|&)token=([^&]+)/.exec(location.hash);
    if (m) {
      const tok = decodeURIComponent(m[1]);
      history.replaceState(null, '', location.pathname + location.search);
      sessionStorage.setItem(TOKEN_KEY, tok);
      return tok;
    }
    return sessionStorage.getItem(TOKEN_KEY);
  }

  function decodeJwt(tok) {
    try {
      const part = tok.split('.')[1];
      const b64 = part.replace(/-/g, '+').replace(/_/g, '/');
      const bin = atob(b64.padEnd(Math.ceil(b64.length / 4) * 4, '='));
      return JSON.parse(new TextDecoder().decode(Uint8Array.from(bin, (c) => c.charCodeAt(0))));
    } catch {
      return null;
    }
  }

  function showSignIn(message) {
    S.inConsole = false;
    $('console-view').hidden = true;
    $('session-bar').hidden = true;
    $('signin-view').hidden = false;
    $('signin-message').textContent = message || '';
    $('signin-message').hidden = !message;
    $('token-input').focus();
  }

  async function signIn(tok) {
    const claims = decodeJwt(tok);
    if (!claims || !claims.sub) {
      sessionStorage.removeItem(TOKEN_KEY);
      return showSignIn(t('tokenInvalid'));
    }
    LANG = pickLang(claims.lang || navigator.language);
    applyStaticI18n();
    if (claims.role !== 'advisor') {
      sessionStorage.removeItem(TOKEN_KEY);
      return showSignIn(t('wrongRole', { role: claims.role || '?' }));
    }
    if (claims.exp && claims.exp * 1000 < Date.now()) {
      sessionStorage.removeItem(TOKEN_KEY);
      return showSignIn(t('tokenExpired'));
    }
    S.token = tok;
    S.claims = claims;
    S.stopped = false;
    sessionStorage.setItem(TOKEN_KEY, tok);
    try {
      S.me = await api('PUT', '/v1/advisors/me', { status: 'online' });
    } catch (e) {
      if (e.status === 401 || e.status === 403) {
        sessionStorage.removeItem(TOKEN_KEY);
        return showSignIn(e.message);
      }
      showError(e);
      S.me = { id: claims.sub, name: claims.name || claims.sub, status: 'offline', capacity: 0, active: 0 };
    }
    enterConsole();
  }

  function enterConsole() {
    S.inConsole = true;
    $('signin-view').hidden = true;
    $('console-view').hidden = false;
    $('session-bar').hidden = false;
    renderMe();
    renderPane();
    renderPacket(null);
    connect();
    refreshQueue();
    loadColleagues().catch(() => {});
    syncOwned(true);
    if (!S.timers) {
      S.timers = true;
      setInterval(refreshQueue, 10000);
      setInterval(tickQueue, 1000);
    }
  }

  function handleAuthLost(message) {
    if (!S.inConsole) return;
    S.stopped = true;
    clearTimeout(S.reconnectTimer);
    if (S.ws) S.ws.close(1000);
    sessionStorage.removeItem(TOKEN_KEY);
    showSignIn(message || t('tokenExpired'));
  }

  async function signOut() {
    try { await api('PUT', '/v1/advisors/me', { status: 'offline' }); } catch { /* leaving anyway */ }
    S.stopped = true;
    if (S.ws) S.ws.close(1000);
    sessionStorage.removeItem(TOKEN_KEY);
    sessionStorage.removeItem(ACTIVE_KEY);
    location.reload();
  }

  // ---------------------------------------------------------------- http
  class ApiError extends Error {
    constructor(status, code, message) { super(message); this.status = status; this.code = code; }
  }

  async function api(method, path, body) {
    const opts = { method, headers: { Authorization: `Bearer ${S.token}`, Accept: 'application/json' } };
    if (body !== undefined) {
      opts.headers['Content-Type'] = 'application/json';
      opts.body = JSON.stringify(body);
    }
    let res;
    try { res = await fetch(path, opts); } catch { throw new ApiError(0, 'network', t('networkError')); }
    const text = await res.text();
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch { data = null; }
    if (!res.ok) {
      const err = new ApiError(res.status, (data && data.error) || `http_${res.status}`,
        (data && data.message) || t('httpError', { status: res.status }));
      if (res.status === 401) handleAuthLost(err.message);
      throw err;
    }
    return data;
  }

  // ---------------------------------------------------------------- advisor & presence
  function renderMe() {
    const me = S.me || {};
    $('advisor-name').textContent = me.name || (S.claims && S.claims.name) || myId();
    if (me.status) $('presence').value = me.status;
    $('load-meter').textContent = me.capacity ? t('load', { active: me.active || 0, capacity: me.capacity }) : '';
  }

  async function refreshMe() {
    try { S.me = await api('GET', '/v1/advisors/me'); renderMe(); } catch { /* keep the last known */ }
  }

  async function onPresenceChange() {
    const select = $('presence');
    const wanted = select.value;
    try {
      S.me = await api('PUT', '/v1/advisors/me', { status: wanted });
      renderMe();
      showInfo(`${t('statusLabel')}: ${t('status_' + wanted)}`);
      refreshQueue();
    } catch (e) {
      showError(e);
      renderMe();
    }
  }

  async function loadColleagues() {
    const data = await api('GET', '/v1/advisors');
    S.colleagues = new Map((data && data.advisors || []).map((a) => [a.id, a]));
    return S.colleagues;
  }

  // ---------------------------------------------------------------- websocket
  function setConn(state) {
    const node = $('connection');
    node.dataset.state = state;
    $('connection-label').textContent = t('conn_' + state);
  }

  function connect() {
    clearTimeout(S.reconnectTimer);
    if (S.stopped) return;
    setConn(S.everConnected ? 'reconnecting' : 'connecting');
    const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
    let ws;
    try {
      ws = new WebSocket(`${proto}//${location.host}/v1/im/ws?access_token=${enc(S.token)}`);
    } catch {
      scheduleReconnect(0);
      return;
    }
    S.ws = ws;
    S.wsReady = false;
    ws.addEventListener('message', (ev) => {
      if (ws !== S.ws) return;
      let frame;
      try { frame = JSON.parse(ev.data); } catch { return; }
      if (frame && typeof frame === 'object') onFrame(frame);
    });
    ws.addEventListener('close', (ev) => { if (ws === S.ws) onSocketClosed(ev); });
  }

  function onSocketClosed(ev) {
    S.ws = null;
    S.wsReady = false;
    clearInterval(S.pingTimer);
    for (const c of S.convs.values()) c.subscribed = false;
    if (S.stopped) return;
    if (ev.code === 4001) { handleAuthLost(t('tokenExpired')); return; }
    scheduleReconnect(ev.code === 4029 ? 3 : 0);
  }

  function scheduleReconnect(extra) {
    if (S.claims && S.claims.exp && S.claims.exp * 1000 < Date.now()) { handleAuthLost(t('tokenExpired')); return; }
    setConn(navigator.onLine === false ? 'offline' : 'reconnecting');
    const base = Math.min(10000, 500 * 2 ** Math.min(S.attempt + extra, 6));
    const delay = Math.min(10000, base * (0.75 + Math.random() * 0.5));
    S.attempt += 1;
    S.reconnectTimer = setTimeout(connect, delay);
  }

  function sendFrame(frame) {
    if (!S.ws || !S.wsReady || S.ws.readyState !== WebSocket.OPEN) return false;
    try { S.ws.send(JSON.stringify(frame)); return true; } catch { return false; }
  }

  function onHello(frame) {
    const reconnected = S.everConnected;
    S.wsReady = true;
    S.everConnected = true;
    S.attempt = 0;
    setConn('online');
    clearInterval(S.pingTimer);
    const every = Math.max(5, Math.min(25, Number(frame.heartbeat_secs) || 20)) * 1000;
    S.pingTimer = setInterval(() => sendFrame({ type: 'ping' }), every);
    for (const c of S.convs.values()) subscribeConv(c);
    resendPending();
    if (reconnected) { refreshQueue(); syncOwned(false); refreshMe(); }
  }

  function onFrame(f) {
    switch (f.type) {
      case 'hello': onHello(f); break;
      case 'subscribed': { const c = S.convs.get(f.conversation_id); if (c) c.subscribed = true; break; }
      case 'message': onLiveMessage(f.message); break;
      case 'ack': onAck(f); break;
      case 'stream': onStream(f); break;
      case 'receipt': onReceipt(f); break;
      case 'typing': onTyping(f); break;
      case 'queue': onQueueFrame(f); break;
      case 'presence': onPresence(f); break;
      case 'error': onFrameError(f); break;
      default: break;
    }
  }

  function subscribeConv(c) {
    const after = c.subscribedOnce ? c.lastSeq : 0;
    if (sendFrame({ type: 'subscribe', id: `sub:${c.id}`, conversation_id: c.id, after_seq: after })) c.subscribedOnce = true;
  }

  function onFrameError(f) {
    const id = String(f.id || '');
    if (id.startsWith('send:')) {
      const cmid = id.slice(5);
      for (const c of S.convs.values()) {
        if (!c.pending.has(cmid)) continue;
        if (f.code === 'rate_limited' || f.code === 'internal') setTimeout(() => transmit(c, cmid), 2000);
        else failPending(c, cmid, f.message || f.code);
      }
    } else if (id.startsWith('sub:')) {
      const c = S.convs.get(id.slice(4));
      if (!c) return;
      if (f.code === 'rate_limited' || f.code === 'internal') setTimeout(() => subscribeConv(c), 2000);
      else checkOwnership(c);
    } else if (f.code === 'rate_limited') {
      /* a receipt or typing frame was dropped; the next one carries the state */
    } else if (f.message && !['validation_failed'].includes(f.code)) {
      showError(f.message);
    }
  }

  function onPresence(f) {
    if (f.participant_id === myId()) {
      if (S.me) S.me.status = f.status;
      renderMe();
    } else if (S.colleagues.has(f.participant_id)) {
      S.colleagues.get(f.participant_id).status = f.status;
    }
  }

  // ---------------------------------------------------------------- queue
  async function refreshQueue() {
    if (!S.inConsole) return;
    if (S.queueBusy) { S.queueAgain = true; return; }
    S.queueBusy = true;
    try {
      const data = await api('GET', '/v1/handoff/queue');
      S.queue = (data && data.entries) || [];
      S.queueAt = Date.now();
      renderQueue(data && data.advisors_online);
    } catch (e) {
      if (e.status !== 401) showError(e);
    } finally {
      S.queueBusy = false;
      if (S.queueAgain) { S.queueAgain = false; refreshQueue(); }
    }
  }

  function onQueueFrame(f) {
    refreshQueue();
    if (f.event === 'transferred' || f.event === 'claimed') syncOwned(false);
  }

  // Rows are updated in place (keyed by conversation), so a button in focus or under the
  // pointer stays the same element across refreshes.
  function renderQueue(advisorsOnline) {
    const list = $('queue');
    const focused = document.activeElement;
    const known = S.queueKnown;
    const next = new Map();
    for (const e of S.queue) {
      const row = S.queueRows.get(e.conversation_id) || createQueueRow(e.conversation_id);
      updateQueueRow(row, e);
      next.set(e.conversation_id, row);
    }
    for (const [id, row] of S.queueRows) if (!next.has(id)) row.li.remove();
    let i = 0;
    for (const row of next.values()) {
      if (list.children[i] !== row.li) list.insertBefore(row.li, list.children[i] || null);
      i += 1;
    }
    S.queueRows = next;
    if (focused && focused !== document.activeElement && document.contains(focused)) focused.focus();
    $('queue-count').textContent = String(S.queue.length);
    $('queue-empty').hidden = S.queue.length > 0;
    $('queue-sub').textContent = advisorsOnline == null ? '' : t('advisorsOnline', { n: advisorsOnline });
    document.title = `${S.queue.length ? `(${S.queue.length}) ` : ''}${t('console')} · wealthdesk`;
    if (known) {
      const fresh = S.queue.filter((e) => !known.has(e.conversation_id))
        .map((e) => t('newInQueue', { name: e.client_name || e.client_id, reason: e.reason_label || e.reason }));
      if (fresh.length) announce(fresh.join('. '));
    }
    S.queueKnown = new Set(S.queue.map((e) => e.conversation_id));
    tickQueue();
  }

  function createQueueRow(id) {
    const r = {
      id, entry: null,
      prio: el('span', { class: 'badge' }),
      esc: el('span', { class: 'badge badge-escalated', text: t('escalated') }),
      lang: el('span', { class: 'badge badge-lang' }),
      waitEl: el('span', { class: 'q-wait' }),
      name: el('strong', { class: 'q-name' }),
      reason: el('span', { class: 'q-reason' }),
      preview: el('p', { class: 'q-preview' }),
      inelig: el('p', { class: 'q-ineligible' }),
      slaEl: el('span', { class: 'q-sla' }),
      claim: el('button', { type: 'button', 'data-testid': 'claim' }),
    };
    r.claim.addEventListener('click', () => claimConversation(r.entry, r.claim));
    r.li = el('li', { 'data-testid': 'queue-entry', 'data-conversation-id': id },
      el('div', { class: 'q-row' }, r.prio, r.esc, r.lang, r.waitEl),
      el('div', { class: 'q-title' }, r.name, r.reason),
      r.preview, r.inelig,
      el('div', { class: 'q-row q-foot' }, r.slaEl, r.claim));
    return r;
  }

  function updateQueueRow(r, e) {
    r.entry = e;
    const prio = ['urgent', 'high', 'normal'].includes(e.priority) ? e.priority : 'normal';
    const name = e.client_name || e.client_id || '';
    const ineligible = e.eligible === false;
    r.li.className = `queue-entry prio-${prio}${ineligible ? ' is-ineligible' : ''}`;
    r.li.setAttribute('data-priority', prio);
    r.prio.className = `badge badge-${prio}`;
    r.prio.textContent = t('prio_' + prio);
    r.esc.hidden = !e.escalated;
    r.lang.textContent = langName(e.language) || e.language || '';
    r.name.textContent = name;
    r.reason.textContent = e.reason_label || e.reason || '';
    r.preview.textContent = e.preview || '';
    r.preview.hidden = !e.preview;
    r.inelig.hidden = !ineligible;
    r.inelig.textContent = ineligible ? t('notEligible', { detail: [e.skill, langName(e.language)].filter(Boolean).join(', ') }) : '';
    if (r.claim.dataset.busy) return;
    const mine = S.convs.has(e.conversation_id);
    r.claim.className = `btn btn-small ${ineligible ? 'btn-muted' : 'btn-primary'}`;
    r.claim.textContent = mine ? t('open') : t('claim');
    r.claim.setAttribute('aria-label', mine ? t('open') : t('claimLabel', { name }));
  }

  function tickQueue() {
    const elapsed = (Date.now() - S.queueAt) / 1000;
    for (const row of S.queueRows.values()) {
      const e = row.entry;
      const waited = (Number(e.waiting_secs) || 0) + elapsed;
      row.waitEl.textContent = t('waiting', { t: fmtDur(waited) });
      const due = Date.parse(e.sla_due_at), from = Date.parse(e.requested_at);
      const remaining = isNaN(due) || isNaN(from) ? null : (due - from) / 1000 - waited;
      const breached = !!e.sla_breached || (remaining != null && remaining <= 0);
      row.li.classList.toggle('is-breached', breached);
      row.slaEl.classList.toggle('is-breached', breached);
      if (breached) row.slaEl.textContent = remaining == null ? t('slaBreachedShort') : t('slaBreached', { t: fmtDur(-remaining) });
      else row.slaEl.textContent = remaining == null ? '' : t('slaIn', { t: fmtDur(remaining) });
    }
  }

  async function claimConversation(entry, button) {
    const id = entry.conversation_id;
    if (S.convs.has(id)) { activate(id); focusComposer(); return; }
    if (button.dataset.busy) return;
    button.dataset.busy = '1';
    button.disabled = true;
    button.textContent = t('claiming');
    try {
      const data = await api('POST', `/v1/conversations/${enc(id)}/claim`);
      const c = openConversation(data.conversation, data.packet, true, entry);
      showInfo(t('claimed', { name: c.clientName }));
      focusComposer();
    } catch (e) {
      showError(e);
    } finally {
      delete button.dataset.busy;
      button.disabled = false;
      button.textContent = S.convs.has(id) ? t('open') : t('claim');
      refreshQueue();
      refreshMe();
    }
  }

  // ---------------------------------------------------------------- conversations
  function createConv(conversation, packet, entry) {
    const client = (packet && packet.client) || {};
    const c = {
      id: conversation.id, conversation, packet: packet || null,
      clientName: client.name || (entry && entry.client_name) || conversation.client_id || '',
      language: conversation.language || client.language || (entry && entry.language) || '',
      reasonLabel: (packet && (packet.reason_label || packet.reason)) || (entry && (entry.reason_label || entry.reason)) || '',
      priority: (packet && packet.priority) || (entry && entry.priority) || 'normal',
      msgs: new Map(), els: new Map(), lastSeq: 0, maxSeq: 0, baseSeq: Number(conversation.last_seq) || 0,
      pending: new Map(), drafts: new Map(), finishedStreams: new Set(),
      clientReadSeq: 0, readSent: 0, unread: 0, clientTyping: false, typingClear: null,
      typingSentAt: 0, typingStop: null, receiptTimer: null, composerText: '', scrollTop: null,
      subscribed: false, subscribedOnce: false, ended: null, openedAt: Date.now(), gapLoading: false,
      listEl: el('div', { class: 'msg-list', role: 'log', 'aria-live': 'polite', tabindex: '0' }),
    };
    c.listEl.setAttribute('aria-label', t('messagesWith', { name: c.clientName }));
    c.stick = true;
    c.listEl.addEventListener('scroll', () => {
      const list = c.listEl;
      if (list.isConnected) c.stick = list.scrollHeight - list.scrollTop - list.clientHeight < 60;
    });
    return c;
  }

  function openConversation(conversation, packet, focus, entry) {
    let c = S.convs.get(conversation.id);
    if (!c) {
      c = createConv(conversation, packet, entry);
      S.convs.set(c.id, c);
      S.order.push(c.id);
      for (const m of (packet && packet.transcript) || []) addMessage(c, m, 'history');
      if (S.wsReady) subscribeConv(c);
    } else if (packet) {
      c.packet = packet;
    }
    if (focus || !S.activeId) activate(c.id);
    else { renderTabs(); if (c.id === S.activeId) renderPacket(c); }
    persistActive();
    return c;
  }

  async function fetchPacket(id) {
    try { return await api('GET', `/v1/conversations/${enc(id)}/packet`); } catch { return null; }
  }

  async function syncOwned(initial) {
    if (S.syncing) { S.syncAgain = true; return; }
    S.syncing = true;
    const started = Date.now();
    const wanted = initial ? sessionStorage.getItem(ACTIVE_KEY) : null;
    try {
      const data = await api('GET', '/v1/advisors/me/conversations');
      const items = (data && data.conversations) || [];
      const owned = new Set(items.map((i) => i.conversation.id));
      const fresh = items.filter((i) => !S.convs.has(i.conversation.id));
      const packets = await Promise.all(fresh.map((i) => fetchPacket(i.conversation.id)));
      fresh.forEach((item, i) => {
        const c = openConversation(item.conversation, packets[i], false, null);
        if (!c.reasonLabel) c.reasonLabel = item.reason || '';
      });
      for (const c of [...S.convs.values()]) {
        if (!owned.has(c.id) && c.openedAt < started && !c.ended) checkOwnership(c);
      }
      if (wanted && S.convs.has(wanted)) activate(wanted);
    } catch (e) {
      if (e.status !== 401) showError(e);
    } finally {
      S.syncing = false;
      if (S.syncAgain) { S.syncAgain = false; syncOwned(false); }
    }
  }

  async function checkOwnership(c) {
    try {
      const h = await api('GET', `/v1/conversations/${enc(c.id)}/handoff`);
      if (h && h.status === 'advisor' && h.advisor && h.advisor.id === myId()) return;
      markEnded(c, h ? h.status : '');
    } catch (e) {
      if (e.status === 403 || e.status === 404) markEnded(c, e.code);
    }
  }

  function markEnded(c, status) {
    if (!S.convs.has(c.id) || c.ended) return;
    c.ended = status || 'closed';
    stopTyping(c);
    renderTabs();
    if (c.id === S.activeId) renderPane();
    refreshMe();
  }

  function removeConv(id) {
    const c = S.convs.get(id);
    if (!c) return;
    stopTyping(c);
    clearTimeout(c.typingClear);
    clearTimeout(c.receiptTimer);
    sendFrame({ type: 'unsubscribe', id: `unsub:${id}`, conversation_id: id });
    const index = S.order.indexOf(id);
    S.convs.delete(id);
    S.order.splice(index, 1);
    if (S.activeId === id) {
      S.activeId = null;
      const next = S.order[Math.min(index, S.order.length - 1)];
      if (next) activate(next); else { renderTabs(); renderPane(); renderPacket(null); }
    } else {
      renderTabs();
    }
    persistActive();
  }

  function persistActive() {
    if (S.activeId) sessionStorage.setItem(ACTIVE_KEY, S.activeId);
    else sessionStorage.removeItem(ACTIVE_KEY);
  }

  // ---------------------------------------------------------------- tabs & pane
  function renderTabs() {
    const bar = $('tabs');
    const hadFocus = bar.contains(document.activeElement);
    bar.replaceChildren(...S.order.map((id) => renderTab(S.convs.get(id))));
    if (hadFocus && S.activeId) { const tab = $(`tab-${S.activeId}`); if (tab) tab.focus(); }
  }

  function renderTab(c) {
    const active = c.id === S.activeId;
    const prio = ['urgent', 'high', 'normal'].includes(c.priority) ? c.priority : 'normal';
    const tab = el('button', {
      type: 'button', role: 'tab', id: `tab-${c.id}`,
      class: `tab${active ? ' is-active' : ''}${c.ended ? ' is-ended' : ''}`,
      'aria-selected': String(active), 'aria-controls': 'pane', tabindex: active ? '0' : '-1',
      'data-testid': 'conversation-tab', 'data-conversation-id': c.id,
    },
    el('span', { class: `prio-dot prio-dot-${prio}`, 'aria-hidden': 'true' }),
    el('span', { class: 'tab-name', text: c.clientName }),
    c.unread ? el('span', { class: 'unread-badge', 'data-testid': 'unread' },
      el('span', { 'aria-hidden': 'true', text: String(c.unread) }),
      el('span', { class: 'sr-only', text: t('unreadN', { n: c.unread }) })) : null);
    tab.addEventListener('click', () => activate(c.id));
    return tab;
  }

  function onTabKey(ev) {
    const keys = ['ArrowLeft', 'ArrowRight', 'Home', 'End'];
    if (!keys.includes(ev.key) || !S.order.length) return;
    ev.preventDefault();
    let i = S.order.indexOf(S.activeId);
    if (ev.key === 'ArrowLeft') i = (i - 1 + S.order.length) % S.order.length;
    else if (ev.key === 'ArrowRight') i = (i + 1) % S.order.length;
    else i = ev.key === 'Home' ? 0 : S.order.length - 1;
    activate(S.order[i]);
    $(`tab-${S.order[i]}`).focus();
  }

  function activate(id) {
    const prev = activeConv();
    if (prev && prev.id !== id) {
      prev.composerText = $('composer').value;
      prev.scrollTop = prev.listEl.scrollTop;
      stopTyping(prev);
    }
    S.activeId = S.convs.has(id) ? id : null;
    const c = activeConv();
    if (c) c.unread = 0;
    renderTabs();
    renderPane();
    renderPacket(c);
    persistActive();
    if (c) scheduleReadReceipt(c);
  }

  function renderPane() {
    const c = activeConv();
    const pane = $('pane');
    $('no-conversation').hidden = !!c;
    pane.hidden = !c;
    if (!c) {
      pane.removeAttribute('data-testid');
      pane.removeAttribute('data-conversation-id');
      $('list-slot').replaceChildren();
      return;
    }
    pane.setAttribute('data-testid', 'conversation');
    pane.setAttribute('data-conversation-id', c.id);
    pane.setAttribute('aria-labelledby', `tab-${c.id}`);
    $('pane-client').textContent = c.clientName;
    $('pane-meta').textContent = [langName(c.language), c.reasonLabel, t('convShort', { id: c.id.slice(0, 8) })]
      .filter(Boolean).join(' · ');
    $('list-slot').replaceChildren(c.listEl);
    c.listEl.scrollTop = c.scrollTop == null || c.stick ? c.listEl.scrollHeight : c.scrollTop;
    const composer = $('composer');
    composer.value = c.composerText;
    composer.disabled = !!c.ended;
    $('composer-label').textContent = t('replyTo', { name: c.clientName });
    for (const id of ['send', 'btn-transfer', 'btn-return', 'btn-close']) $(id).disabled = !!c.ended;
    $('pane-banner').hidden = !c.ended;
    $('pane-banner-text').textContent = c.ended ? t('endedBanner', { status: endedLabel(c.ended) }) : '';
    autoGrow();
    renderTyping(c);
  }

  function endedLabel(status) {
    const key = { bot: 'ev_returned', closed: 'ev_closed', advisor: 'ev_transferred', queued: 'ev_queued' }[status];
    return key ? t(key) : status;
  }

  function focusComposer() {
    const composer = $('composer');
    if (!composer.disabled && !$('pane').hidden) composer.focus();
  }

  function scrollToBottom(c, force) {
    if (c.id !== S.activeId || !(force || c.stick)) return;
    c.listEl.scrollTop = c.listEl.scrollHeight;
    c.stick = true;
  }

  function jumpToSeq(c, seq) {
    const node = c.els.get(Number(seq));
    if (!node) return;
    node.scrollIntoView({ block: 'center', behavior: 'smooth' });
    node.classList.add('flash');
    node.focus({ preventScroll: true });
    setTimeout(() => node.classList.remove('flash'), 1800);
  }

  // ---------------------------------------------------------------- messages in
  function isOwn(m) { return m.sender && m.sender.role === 'advisor' && m.sender.id === myId(); }

  function onLiveMessage(m) {
    const c = m && S.convs.get(m.conversation_id);
    if (c) addMessage(c, m, 'live');
  }

  // mode: 'history' (packet transcript), 'live' (socket), 'ack' (own send acknowledged), 'fill' (gap fetch)
  function addMessage(c, m, mode) {
    if (!m || typeof m.seq !== 'number' || c.msgs.has(m.seq)) return;
    const fresh = mode !== 'history';
    const gap = mode === 'live' && c.subscribed && m.seq > c.lastSeq + 1;
    c.msgs.set(m.seq, m);
    c.maxSeq = Math.max(c.maxSeq, m.seq);
    while (c.msgs.has(c.lastSeq + 1)) c.lastSeq += 1;
    const role = (m.sender && m.sender.role) || 'system';
    let node = null;
    const pending = m.client_msg_id ? c.pending.get(m.client_msg_id) : null;
    if (pending && role === 'advisor') {
      c.pending.delete(m.client_msg_id);
      node = pending.node;
      finishOwnNode(c, node, m);
    }
    if (m.client_msg_id && role === 'bot') {
      c.finishedStreams.add(m.client_msg_id);
      dropDraft(c, m.client_msg_id);
    }
    if (role === 'system' && m.kind === 'handoff') for (const id of [...c.drafts.keys()]) dropDraft(c, id);
    if (!node) node = renderMessage(c, m);
    c.els.set(m.seq, node);
    insertNode(c, node, m.seq);
    if (isOwn(m) && m.seq <= c.clientReadSeq) markRead(node);
    if (fresh) afterFreshMessage(c, m, role);
    if (gap) fillGap(c);
  }

  function afterFreshMessage(c, m, role) {
    const isNew = m.seq > c.baseSeq;
    if (role === 'client') setClientTyping(c, false);
    if (c.id === S.activeId) {
      scrollToBottom(c, isOwn(m));
      scheduleReadReceipt(c);
    }
    if (isNew && !isOwn(m) && role !== 'bot' && (c.id !== S.activeId || document.hidden)) {
      c.unread += 1;
      renderTabs();
      announce(t('newMessageFrom', { name: role === 'client' ? c.clientName : advisorName(m.sender && m.sender.id) }));
    }
    const ev = m.body && m.body.handoff && m.body.handoff.event;
    if (isNew && role === 'system' && ENDING_EVENTS.has(ev)) {
      const to = m.body.handoff.advisor;
      if (!(ev === 'transferred' && to && to.id === myId())) checkOwnership(c);
    }
  }

  function insertNode(c, node, seq) {
    let before = null;
    for (let ch = c.listEl.lastElementChild; ch; ch = ch.previousElementSibling) {
      const s = ch.dataset.seq ? Number(ch.dataset.seq) : Infinity;
      if (s > seq) before = ch; else break;
    }
    c.listEl.insertBefore(node, before);
  }

  async function fillGap(c) {
    if (c.gapLoading) return;
    c.gapLoading = true;
    try {
      for (let round = 0; round < 20; round += 1) {
        const after = c.lastSeq;
        const data = await api('GET', `/v1/conversations/${enc(c.id)}/messages?after_seq=${after}&limit=500`);
        for (const m of (data && data.messages) || []) addMessage(c, m, 'fill');
        if (!data || !data.has_more || c.lastSeq <= after) break;
      }
    } catch (e) {
      if (e.status !== 401) setTimeout(() => { if (S.wsReady) subscribeConv(c); }, 1000);
    } finally {
      c.gapLoading = false;
    }
  }

  function onStream(f) {
    const c = S.convs.get(f.conversation_id);
    if (!c || c.finishedStreams.has(f.stream_id)) return;
    let d = c.drafts.get(f.stream_id);
    if (!d) {
      const text = el('p', { class: 'msg-text' });
      const node = el('article', { class: 'msg msg--bot msg--draft', 'data-testid': 'draft', 'aria-busy': 'true' },
        el('header', { class: 'msg-meta' }, el('span', { class: 'msg-author', text: t('role_bot') })),
        el('div', { class: 'msg-bubble' }, text));
      d = { node, text, attempt: f.attempt };
      c.drafts.set(f.stream_id, d);
      c.listEl.append(node);
    }
    if (f.reset || f.attempt !== d.attempt) { d.text.textContent = ''; d.attempt = f.attempt; }
    if (f.delta) d.text.textContent += f.delta;
    scrollToBottom(c, false);
  }

  function dropDraft(c, streamId) {
    const d = c.drafts.get(streamId);
    if (d) { d.node.remove(); c.drafts.delete(streamId); }
  }

  // ---------------------------------------------------------------- receipts & typing
  // Batched: a replay of many messages produces one receipt, not one per message.
  function scheduleReadReceipt(c) {
    if (!c || c.receiptTimer) return;
    c.receiptTimer = setTimeout(() => { c.receiptTimer = null; sendReadReceipt(c); }, 300);
  }

  function sendReadReceipt(c) {
    if (!c || c.id !== S.activeId || document.visibilityState === 'hidden' || !c.maxSeq) return;
    if (c.maxSeq <= c.readSent) return;
    if (sendFrame({ type: 'receipt', conversation_id: c.id, status: 'read', seq: c.maxSeq })) c.readSent = c.maxSeq;
  }

  function onReceipt(f) {
    const c = S.convs.get(f.conversation_id);
    if (!c || f.role !== 'client' || f.status !== 'read' || !(f.seq > c.clientReadSeq)) return;
    c.clientReadSeq = f.seq;
    for (const [seq, node] of c.els) {
      if (seq <= f.seq && node.classList.contains('msg--own')) markRead(node);
    }
    scrollToBottom(c, false);
  }

  function markRead(node) {
    const status = node.querySelector('.msg-status');
    if (!status || status.querySelector('[data-testid="read"]')) return;
    status.replaceChildren(el('span', { class: 'read-mark', 'data-testid': 'read', text: `✓ ${t('read')}` }));
  }

  function onTyping(f) {
    const c = S.convs.get(f.conversation_id);
    if (!c || f.participant_id === myId() || f.role !== 'client') return;
    setClientTyping(c, !!f.active);
  }

  function setClientTyping(c, active) {
    clearTimeout(c.typingClear);
    c.clientTyping = active;
    if (active) c.typingClear = setTimeout(() => setClientTyping(c, false), 6000);
    if (c.id === S.activeId) renderTyping(c);
  }

  function renderTyping(c) {
    const node = $('typing');
    node.hidden = !c.clientTyping;
    node.textContent = c.clientTyping ? t('clientTyping', { name: c.clientName }) : '';
  }

  function onComposerInput() {
    autoGrow();
    const c = activeConv();
    if (!c || c.ended) return;
    if (!$('composer').value.trim()) { stopTyping(c); return; }
    const now = Date.now();
    if (now - c.typingSentAt > 3000 && sendFrame({ type: 'typing', conversation_id: c.id, active: true })) c.typingSentAt = now;
    clearTimeout(c.typingStop);
    c.typingStop = setTimeout(() => stopTyping(c), 4000);
  }

  function stopTyping(c) {
    clearTimeout(c.typingStop);
    if (!c.typingSentAt) return;
    c.typingSentAt = 0;
    if (S.convs.has(c.id)) sendFrame({ type: 'typing', conversation_id: c.id, active: false });
  }

  function autoGrow() {
    const ta = $('composer');
    ta.style.height = 'auto';
    ta.style.height = `${Math.min(ta.scrollHeight + 2, 220)}px`;
  }

  // ---------------------------------------------------------------- messages out
  function onComposerKey(ev) {
    if (ev.key === 'Enter' && !ev.shiftKey && !ev.isComposing && ev.keyCode !== 229 && !ev.altKey && !ev.ctrlKey && !ev.metaKey) {
      ev.preventDefault();
      sendReply();
    }
  }

  function sendReply() {
    const c = activeConv();
    const composer = $('composer');
    if (!c || c.ended) return;
    const text = composer.value.replace(/\s+$/, '');
    if (!text.trim()) return;
    if (text.length > 60000) { showError(t('tooLong')); return; }
    const cmid = newId('adv-');
    const node = renderOwnPending(c, text);
    c.pending.set(cmid, { cmid, text, node, http: false });
    c.listEl.append(node);
    scrollToBottom(c, true);
    composer.value = '';
    c.composerText = '';
    autoGrow();
    stopTyping(c);
    transmit(c, cmid);
  }

  function transmit(c, cmid) {
    const p = c.pending.get(cmid);
    if (!p || !S.convs.has(c.id)) return;
    setPendingStatus(p, t('sending'));
    const frame = { type: 'send', id: `send:${cmid}`, conversation_id: c.id, client_msg_id: cmid, kind: 'text', body: { text: p.text } };
    if (!sendFrame(frame)) sendViaHttp(c, cmid);
  }

  async function sendViaHttp(c, cmid) {
    const p = c.pending.get(cmid);
    if (!p || p.http) return;
    p.http = true;
    try {
      const ack = await api('POST', `/v1/conversations/${enc(c.id)}/messages`, { client_msg_id: cmid, kind: 'text', body: { text: p.text } });
      if (ack && typeof ack.seq === 'number') onAck({ ...ack, conversation_id: c.id, client_msg_id: cmid });
    } catch (e) {
      if (e.status >= 400 && e.status < 500 && e.status !== 408 && e.status !== 429) failPending(c, cmid, e.message);
      else setPendingStatus(p, t('queued'));
    } finally {
      p.http = false;
    }
  }

  function resendPending() {
    for (const c of S.convs.values()) for (const cmid of c.pending.keys()) transmit(c, cmid);
  }

  function onAck(f) {
    const c = S.convs.get(f.conversation_id);
    const p = c && c.pending.get(f.client_msg_id);
    if (!p) return;
    if (c.msgs.has(f.seq)) {
      c.pending.delete(f.client_msg_id);
      p.node.remove();
      return;
    }
    addMessage(c, {
      conversation_id: c.id, seq: f.seq, sender: { id: myId(), role: 'advisor' }, kind: 'text',
      body: { text: p.text }, client_msg_id: f.client_msg_id, created_at: f.created_at,
    }, 'ack');
  }

  function failPending(c, cmid, message) {
    const p = c.pending.get(cmid);
    if (!p) return;
    const retry = el('button', { type: 'button', class: 'link-btn', text: t('retry') });
    retry.addEventListener('click', () => transmit(c, cmid));
    p.node.classList.add('is-failed');
    p.node.querySelector('.msg-status').replaceChildren(el('span', { class: 'fail-text', text: t('notSent', { msg: message }) }), ' ', retry);
    showError(message);
  }

  function setPendingStatus(p, text) {
    p.node.classList.remove('is-failed');
    p.node.querySelector('.msg-status').replaceChildren(el('span', { text }));
  }

  // ---------------------------------------------------------------- message rendering
  function authorLabel(c, m) {
    const role = (m.sender && m.sender.role) || 'system';
    if (role === 'client') return `${c.clientName} · ${t('role_client')}`;
    if (role === 'bot') return t('role_bot');
    if (isOwn(m)) return `${advisorName(myId())} · ${t('role_advisor')} (${t('you')})`;
    return `${advisorName(m.sender && m.sender.id)} · ${t('role_advisor')}`;
  }

  function msgShell(c, m, role, kind, own, content) {
    return el('article', {
      class: `msg msg--${role}${own ? ' msg--own' : ''}`, 'data-testid': 'message',
      'data-seq': m.seq, 'data-role': role, 'data-kind': kind, tabindex: '-1',
    },
    el('header', { class: 'msg-meta' },
      el('span', { class: 'msg-author', text: authorLabel(c, m) }),
      m.created_at ? el('time', { datetime: m.created_at, text: fmtTime(m.created_at) }) : null),
    el('div', { class: 'msg-bubble' }, content),
    own ? el('div', { class: 'msg-status' }) : null);
  }

  function renderOwnPending(c, text) {
    const m = { sender: { id: myId(), role: 'advisor' }, created_at: new Date().toISOString() };
    const node = msgShell(c, m, 'advisor', 'text', true, el('p', { class: 'msg-text', text }));
    node.removeAttribute('data-seq');
    node.setAttribute('data-pending', 'true');
    node.classList.add('is-pending');
    return node;
  }

  function finishOwnNode(c, node, m) {
    node.setAttribute('data-seq', m.seq);
    node.removeAttribute('data-pending');
    node.classList.remove('is-pending', 'is-failed');
    node.querySelector('.msg-status').replaceChildren();
  }

  function renderMessage(c, m) {
    const role = (m.sender && m.sender.role) || 'system';
    const kind = m.kind || 'text';
    const body = m.body && typeof m.body === 'object' ? m.body : { text: String(m.body ?? '') };
    if (role === 'system') return renderSystemNotice(m, kind, body);
    return msgShell(c, m, role, kind, isOwn(m), renderBody(c, role, kind, body));
  }

  function renderSystemNotice(m, kind, body) {
    const h = body.handoff || {};
    const label = h.event && I18N.en['ev_' + h.event] ? t('ev_' + h.event) : '';
    return el('div', { class: 'msg msg--system', 'data-testid': 'message', 'data-seq': m.seq, 'data-role': 'system', 'data-kind': kind, tabindex: '-1' },
      el('p', { class: 'notice' },
        label && label !== body.text ? el('strong', { text: label }) : null,
        label && body.text ? ' — ' : null,
        body.text || '',
        m.created_at ? el('time', { datetime: m.created_at, text: ` · ${fmtTime(m.created_at)}` }) : null));
  }

  function textBlock(text) { return el('p', { class: 'msg-text', text: text || '' }); }
  function tag(text, cls) { return el('span', { class: `tag ${cls || ''}`, text }); }

  function renderBody(c, role, kind, body) {
    const out = [];
    if (role === 'bot' && body.mode && ['greeting', 'answer', 'recommendation'].includes(kind)) out.push(tag(t('mode_' + body.mode), 'tag-mode'));
    if (role === 'bot' && kind === 'refusal' && body.guardrail) out.push(tag(t('guardrail', { rule: body.guardrail }), 'tag-warn'));
    if (role === 'bot' && kind === 'question') out.push(renderQuestion(body));
    else out.push(textBlock(body.text));
    if (role === 'bot' && kind === 'assessment') out.push(renderAssessment(body.profile));
    if (role === 'bot' && kind === 'product') out.push(renderProductCard(body));
    if (Array.isArray(body.products) && body.products.length) out.push(renderProductList(body.products));
    if (body.disclosures) out.push(renderDisclosures(body.disclosures));
    if (Array.isArray(body.citations) && body.citations.length) out.push(renderCitations(body.citations));
    if (role === 'client' && body.answer) out.push(tag(t('questionnaireAnswer'), 'tag-info'));
    if (body.offer_human_advisor) out.push(tag(t('offeredAdvisor'), 'tag-info'));
    return out;
  }

  function renderQuestion(body) {
    const q = body.question || {};
    const options = Array.isArray(q.options) ? q.options : [];
    return el('div', { class: 'question' },
      q.index ? el('p', { class: 'q-step', text: t('questionOf', { i: q.index, n: q.total || '?' }) }) : null,
      textBlock(q.text || body.text),
      options.length ? el('p', { class: 'caption', text: t('optionsShown') }) : null,
      options.length ? el('ul', { class: 'option-list' }, options.map((o) =>
        el('li', { class: o.id && o.id === q.previous_answer ? 'is-previous' : '' },
          el('span', { class: 'opt-letter', text: o.letter || o.number || '' }), o.label || ''))) : null);
  }

  function renderAssessment(p) {
    if (!p) return null;
    return el('dl', { class: 'card-mini' },
      el('dt', { text: t('level') }), el('dd', { text: [p.level, p.level_name].filter(Boolean).join(' · ') || '—' }),
      p.category ? [el('dt', { text: t('category') }), el('dd', { text: p.category })] : null,
      p.max_product ? [el('dt', { text: t('maxProduct') }), el('dd', { text: p.max_product })] : null,
      p.expires_at ? [el('dt', { text: t('expires') }), el('dd', { text: fmtDateTime(p.expires_at) })] : null);
  }

  function productName(p) {
    if (p == null) return '';
    if (typeof p !== 'object') return String(p);
    return p.name || p.product_id || p.id || '';
  }

  function renderProductCard(body) {
    const p = body.product || {};
    const verdict = body.suitability || {};
    const eligible = typeof body.suitable === 'boolean' ? body.suitable : verdict.eligible;
    return el('div', { class: 'card-mini product-card' },
      el('strong', { text: productName(p) }),
      p.risk_level ? el('span', { class: 'risk-chip', text: p.risk_level }) : null,
      typeof eligible === 'boolean' ? el('p', { class: eligible ? 'ok-text' : 'bad-text', text: eligible ? t('suitable') : t('notSuitable') }) : null);
  }

  function renderProductList(products) {
    return el('div', { class: 'product-list' },
      el('p', { class: 'caption', text: t('productsShown') }),
      el('ul', {}, products.map((p) => el('li', {},
        el('span', { text: productName(p) }),
        p && p.risk_level ? el('span', { class: 'risk-chip', text: p.risk_level }) : null))));
  }

  function renderDisclosures(d) {
    let lines = [];
    if (Array.isArray(d)) lines = d.map((k) => (I18N.en['disc_' + k] ? t('disc_' + k) : String(k)));
    else if (typeof d === 'object') lines = Object.entries(d).filter(([, v]) => v).map(([k, v]) => (typeof v === 'string' ? v : t('disc_' + k)));
    else lines = [String(d)];
    return el('div', { class: 'disclosure', 'data-testid': 'disclosure', role: 'note' },
      el('p', { class: 'disclosure-head' }, el('span', { 'aria-hidden': 'true', text: '⚠ ' }), t('riskDisclosure')),
      lines.map((line) => el('p', { text: line })));
  }

  function renderCitations(citations) {
    return el('div', { class: 'citations' },
      el('p', { class: 'caption', text: t('sources') }),
      el('ul', {}, citations.map((ci) => {
        const label = `[${ci.n ?? '•'}] ${ci.title || ci.doc_id || ''}${ci.section ? ` — ${ci.section}` : ''}`;
        const btn = el('button', { type: 'button', class: 'link-btn', 'data-testid': 'citation', text: label });
        btn.addEventListener('click', () => openSource(ci, btn));
        return el('li', {}, btn);
      })));
  }

  // ---------------------------------------------------------------- packet
  function pkSection(testid, titleKey, ...content) {
    const hid = `pk-${testid}`;
    return el('section', { class: 'pk-section', 'data-testid': testid, 'aria-labelledby': hid },
      el('h3', { id: hid, text: t(titleKey) }), ...content);
  }

  function emptyLine(key) { return el('p', { class: 'empty-note', text: t(key) }); }

  function seqLink(c, seq) {
    if (seq == null) return null;
    const btn = el('button', { type: 'button', class: 'seq-link', text: `#${seq}`, 'aria-label': t('goTo', { seq }) });
    btn.addEventListener('click', () => jumpToSeq(c, seq));
    return btn;
  }

  function renderPacket(c) {
    const body = $('packet-body');
    if (!c) { body.replaceChildren(emptyLine('packetEmpty')); return; }
    const p = c.packet;
    if (!p) {
      const retry = el('button', { type: 'button', class: 'btn btn-small', text: t('reload') });
      retry.addEventListener('click', () => reloadPacket(c));
      body.replaceChildren(emptyLine('packetUnavailable'), retry);
      return;
    }
    body.replaceChildren(
      packetClient(c, p), packetReason(p), packetSummary(p), packetProfile(p.profile),
      packetProducts(c, p.products), packetCitations(c, p.citations), packetGuardrails(c, p.guardrails),
      packetEvents(p.events, p.notes));
  }

  async function reloadPacket(c) {
    try {
      c.packet = await api('GET', `/v1/conversations/${enc(c.id)}/packet`);
      if (c.id === S.activeId) renderPacket(c);
    } catch (e) { showError(e); }
  }

  function packetClient(c, p) {
    const client = p.client || {};
    return el('div', { class: 'pk-client' },
      el('div', { class: 'pk-avatar', 'aria-hidden': 'true', text: (client.name || c.clientName || '?').slice(0, 1).toUpperCase() }),
      el('div', {}, el('strong', { text: client.name || c.clientName }),
        el('p', { class: 'muted small', text: [client.id, langName(client.language || c.language)].filter(Boolean).join(' · ') })));
  }

  function packetReason(p) {
    const prio = ['urgent', 'high', 'normal'].includes(p.priority) ? p.priority : null;
    return pkSection('packet-reason', 'pk_reason',
      el('p', { class: 'pk-reason-line' },
        prio ? el('span', { class: `badge badge-${prio}`, text: t('prio_' + prio) }) : null,
        el('strong', { text: p.reason_label || p.reason || '—' })),
      p.reason && p.reason_label ? el('p', { class: 'muted small mono', text: p.reason }) : null,
      el('dl', { class: 'kv' },
        el('dt', { text: t('requested') }), el('dd', { text: fmtDateTime(p.requested_at) }),
        el('dt', { text: t('waited') }), el('dd', { text: p.waited_secs != null ? fmtDur(p.waited_secs) : '—' })));
  }

  function packetSummary(p) {
    const s = p.summary || {};
    const llm = s.source === 'llm';
    return pkSection('packet-summary', 'pk_summary',
      el('span', { class: `tag ${llm ? 'tag-ai' : 'tag-info'}`, text: llm ? t('summary_llm') : t('summary_extractive') }),
      el('p', { class: 'pk-summary-text', text: s.text || '—' }),
      llm ? el('p', { class: 'muted small', text: t('summaryCheck') }) : null);
  }

  function packetProfile(profile) {
    if (!profile) return pkSection('packet-profile', 'pk_profile', emptyLine('noProfile'));
    const answers = Array.isArray(profile.answers) ? profile.answers : [];
    const valid = profile.valid !== false;
    return pkSection('packet-profile', 'pk_profile',
      el('dl', { class: 'kv' },
        el('dt', { text: t('level') }), el('dd', { text: profile.level || '—' }),
        el('dt', { text: t('category') }), el('dd', { text: profile.category || '—' }),
        el('dt', { text: t('status') }), el('dd', {}, el('span', { class: `tag ${valid ? 'tag-ok' : 'tag-bad'}`, text: valid ? t('valid') : t('expired') })),
        el('dt', { text: t('assessed') }), el('dd', { text: fmtDateTime(profile.assessed_at) }),
        el('dt', { text: t('expires') }), el('dd', { class: valid ? '' : 'bad-text', text: fmtDateTime(profile.expires_at) }),
        profile.max_product ? [el('dt', { text: t('maxProduct') }), el('dd', { text: profile.max_product })] : null),
      answers.length ? el('details', { class: 'pk-answers' },
        el('summary', { text: t('answersN', { n: answers.length }) }),
        el('ol', {}, answers.map((a) => el('li', {},
          el('span', { class: 'pk-q', text: a.question || '' }),
          el('span', { class: 'pk-a', text: a.answer || '' }))))) : null);
  }

  function packetProducts(c, products) {
    const list = Array.isArray(products) ? products : [];
    return pkSection('packet-products', 'pk_products', list.length ? el('ul', { class: 'pk-list' }, list.map((p) =>
      el('li', {},
        el('span', { class: 'pk-main', text: productName(p) }),
        p.risk_level ? el('span', { class: 'risk-chip', text: p.risk_level }) : null,
        p.product_id && p.name ? el('span', { class: 'muted small mono', text: p.product_id }) : null,
        seqLink(c, p.seq)))) : emptyLine('noProducts'));
  }

  function packetCitations(c, citations) {
    const list = Array.isArray(citations) ? citations : [];
    return pkSection('packet-citations', 'pk_citations', list.length ? el('ul', { class: 'pk-list' }, list.map((ci) => {
      const btn = el('button', { type: 'button', class: 'link-btn', text: `${ci.title || ci.doc_id}${ci.section ? ` — ${ci.section}` : ''}` });
      btn.addEventListener('click', () => openSource(ci, btn));
      return el('li', {}, btn, seqLink(c, ci.seq));
    })) : emptyLine('noCitations'));
  }

  function packetGuardrails(c, hits) {
    const list = Array.isArray(hits) ? hits : [];
    return pkSection('packet-guardrails', 'pk_guardrails', list.length ? el('ul', { class: 'pk-list' }, list.map((g) =>
      el('li', { class: 'pk-guard' },
        el('span', { class: 'pk-main mono', text: g.rule || '' }),
        g.action ? el('span', { class: `tag ${g.action === 'block' ? 'tag-bad' : 'tag-warn'}`, text: g.action }) : null,
        g.direction ? el('span', { class: 'muted small', text: I18N.en['dir_' + g.direction] ? t('dir_' + g.direction) : g.direction }) : null,
        seqLink(c, g.seq)))) : emptyLine('noGuardrails'));
  }

  function detailText(detail) {
    if (!detail || typeof detail !== 'object') return detail == null ? '' : String(detail);
    return Object.entries(detail).filter(([, v]) => v != null && v !== '')
      .map(([k, v]) => `${k}: ${typeof v === 'object' ? JSON.stringify(v) : v}`).join(' · ');
  }

  function packetEvents(events, notes) {
    const ev = Array.isArray(events) ? events : [];
    const ns = Array.isArray(notes) ? notes : [];
    return pkSection('packet-events', 'pk_events',
      ns.map((n) => el('blockquote', { class: 'pk-note' },
        el('p', { class: 'pk-note-head' }, el('strong', { text: t('noteFrom', { name: advisorName(n.from) }) }), ` · ${fmtDateTime(n.at)}`),
        el('p', { class: 'pk-note-text', text: n.text || '' }))),
      ev.length ? el('ol', { class: 'timeline' }, ev.map((e) => el('li', {},
        el('time', { datetime: e.at, text: fmtDateTime(e.at) }),
        el('strong', { class: 'mono', text: e.event || '' }),
        e.actor_id ? el('span', { class: 'muted small', text: advisorName(e.actor_id) }) : null,
        detailText(e.detail) ? el('span', { class: 'small timeline-detail', text: detailText(e.detail) }) : null))) : null,
      !ev.length && !ns.length ? emptyLine('noEvents') : null);
  }

  // ---------------------------------------------------------------- dialogs
  function focusables(root) {
    return [...root.querySelectorAll('button, select, textarea, input, [href], [tabindex]:not([tabindex="-1"])')]
      .filter((n) => !n.disabled && n.offsetParent !== null);
  }

  function openDialog(dlg, opener) {
    dlg.returnFocusTo = opener || document.activeElement;
    const err = dlg.querySelector('.dialog-error');
    if (err) err.textContent = '';
    if (typeof dlg.showModal === 'function') { if (!dlg.open) dlg.showModal(); } else dlg.setAttribute('open', '');
    const first = focusables(dlg).find((n) => n.tagName !== 'BUTTON') || focusables(dlg)[0];
    if (first) first.focus();
  }

  function closeDialog(dlg, keepFocus) {
    if (keepFocus) dlg.returnFocusTo = null;
    if (typeof dlg.close === 'function' && dlg.open) dlg.close();
    else if (dlg.hasAttribute('open')) { dlg.removeAttribute('open'); onDialogClosed(dlg); }
  }

  function onDialogClosed(dlg) {
    const back = dlg.returnFocusTo;
    dlg.returnFocusTo = null;
    if (back && document.contains(back) && !back.disabled && back.offsetParent !== null) back.focus();
  }

  function onDialogKey(ev) {
    const dlg = ev.currentTarget;
    if (ev.key === 'Escape') { ev.preventDefault(); closeDialog(dlg); return; }
    if (ev.key !== 'Tab') return;
    const items = focusables(dlg);
    if (!items.length) return;
    const first = items[0], last = items[items.length - 1];
    if (ev.shiftKey && document.activeElement === first) { ev.preventDefault(); last.focus(); }
    else if (!ev.shiftKey && document.activeElement === last) { ev.preventDefault(); first.focus(); }
  }

  function dialogBusy(dlg, busy, message) {
    for (const b of dlg.querySelectorAll('button[type="submit"]')) b.disabled = busy;
    if (message != null) dlg.querySelector('.dialog-error').textContent = message;
  }

  async function openTransfer() {
    const c = activeConv();
    if (!c || c.ended) return;
    const dlg = $('transfer-dialog');
    const select = $('transfer-to');
    select.replaceChildren(el('option', { value: '', text: t('loading') }));
    $('transfer-note').value = '';
    dlg.dataset.conversationId = c.id;
    openDialog(dlg, $('btn-transfer'));
    dialogBusy(dlg, true);
    try { await loadColleagues(); } catch (e) { dialogBusy(dlg, true, e.message); return; }
    const others = [...S.colleagues.values()].filter((a) => a.id !== myId());
    const canTake = (a) => a.status === 'online' && (Number(a.active) || 0) < (Number(a.capacity) || 0);
    others.sort((a, b) => Number(canTake(b)) - Number(canTake(a)) || String(a.name).localeCompare(String(b.name)));
    const options = others.map((a) => el('option', {
      value: a.id, disabled: !canTake(a),
      text: `${a.name || a.id} — ${t('status_' + a.status)} · ${a.active ?? 0}/${a.capacity ?? 0}${canTake(a) || a.status !== 'online' ? '' : ` (${t('full')})`}${(a.languages || []).length ? ` · ${a.languages.map(langName).join('/')}` : ''}`,
    }));
    const available = others.some(canTake);
    if (!available) options.unshift(el('option', { value: '', text: t('noColleague') }));
    select.replaceChildren(...options);
    if (available) select.value = others.find(canTake).id;
    dialogBusy(dlg, !available);
    select.focus();
  }

  /**
   * Sends what a dialog asks for about its conversation; on success closes the dialog,
   * says `done` and lets the conversation go, else keeps the dialog open with the error.
   */
  async function submitDialog(dlg, action, body, done) {
    const c = S.convs.get(dlg.dataset.conversationId);
    if (!c) return;
    dialogBusy(dlg, true, '');
    try {
      await api('POST', `/v1/conversations/${enc(c.id)}/${action}`, body);
      closeDialog(dlg, true);
      showInfo(done);
      finishConversation(c);
    } catch (e) {
      dialogBusy(dlg, false, e.message);
      showError(e);
    }
  }

  async function submitTransfer(ev) {
    ev.preventDefault();
    const to = $('transfer-to').value;
    if (!to) return;
    await submitDialog($('transfer-dialog'), 'transfer', { to, note: $('transfer-note').value.trim() },
      t('transferredTo', { name: advisorName(to) }));
  }

  function openReturn() {
    const c = activeConv();
    if (!c || c.ended) return;
    const dlg = $('return-dialog');
    dlg.dataset.conversationId = c.id;
    $('return-note').value = '';
    dialogBusy(dlg, false);
    openDialog(dlg, $('btn-return'));
  }

  async function submitReturn(ev) {
    ev.preventDefault();
    await submitDialog($('return-dialog'), 'return', { note: $('return-note').value.trim() }, t('returnedDone'));
  }

  function openClose() {
    const c = activeConv();
    if (!c || c.ended) return;
    const dlg = $('close-dialog');
    dlg.dataset.conversationId = c.id;
    $('disposition').value = 'resolved';
    $('close-note').value = '';
    dialogBusy(dlg, false);
    openDialog(dlg, $('btn-close'));
  }

  async function submitClose(ev) {
    ev.preventDefault();
    const disposition = $('disposition').value;
    await submitDialog($('close-dialog'), 'close', { disposition, note: $('close-note').value.trim() },
      t('closedDone', { disposition: t('disp_' + disposition) }));
  }

  function finishConversation(c) {
    removeConv(c.id);
    refreshQueue();
    refreshMe();
    if (S.activeId) focusComposer(); else $('workspace').focus();
  }

  async function openSource(ci, opener) {
    const dlg = $('source-dialog');
    $('source-title').textContent = ci.title || ci.doc_id || t('sourceTitle');
    $('source-meta').textContent = t('loading');
    $('source-text').textContent = '';
    openDialog(dlg, opener);
    $('source-close').focus();
    try {
      const q = ci.version_hash ? `?version=${enc(ci.version_hash)}` : '';
      const doc = await api('GET', `/v1/knowledge/documents/${enc(ci.doc_id)}${q}`);
      $('source-meta').textContent = [doc.path, ci.section, doc.version_hash && t('version', { v: String(doc.version_hash).slice(0, 12) }),
        doc.retired_at && t('retired')].filter(Boolean).join(' · ');
      $('source-text').textContent = doc.source || '';
    } catch (e) {
      $('source-meta').textContent = e.message;
    }
  }

  // ---------------------------------------------------------------- wiring
  function bindEvents() {
    $('signin-form').addEventListener('submit', (ev) => {
      ev.preventDefault();
      const tok = $('token-input').value.trim().replace(/^Bearer\s+/i, '');
      if (tok) signIn(tok);
      else $('token-input').focus();
    });
    $('sign-out').addEventListener('click', signOut);
    $('presence').addEventListener('change', onPresenceChange);
    $('tabs').addEventListener('keydown', onTabKey);
    $('composer-form').addEventListener('submit', (ev) => { ev.preventDefault(); sendReply(); focusComposer(); });
    $('composer').addEventListener('keydown', onComposerKey);
    $('composer').addEventListener('input', onComposerInput);
    $('composer').addEventListener('blur', () => { const c = activeConv(); if (c) stopTyping(c); });
    $('btn-transfer').addEventListener('click', openTransfer);
    $('btn-return').addEventListener('click', openReturn);
    $('btn-close').addEventListener('click', openClose);
    $('pane-banner-close').addEventListener('click', () => { if (S.activeId) removeConv(S.activeId); });
    $('transfer-form').addEventListener('submit', submitTransfer);
    $('return-form').addEventListener('submit', submitReturn);
    $('close-form').addEventListener('submit', submitClose);
    for (const dlg of document.querySelectorAll('dialog')) {
      dlg.addEventListener('keydown', onDialogKey);
      dlg.addEventListener('close', () => onDialogClosed(dlg));
      for (const b of dlg.querySelectorAll('[data-dialog-cancel]')) b.addEventListener('click', () => closeDialog(dlg));
    }
    $('error-dismiss').addEventListener('click', hideError);
    document.addEventListener('visibilitychange', () => {
      const c = activeConv();
      if (document.visibilityState === 'visible' && c) { c.unread = 0; renderTabs(); scheduleReadReceipt(c); }
    });
    window.addEventListener('focus', () => scheduleReadReceipt(activeConv()));
    window.addEventListener('online', () => { if (S.inConsole && !S.ws) { S.attempt = 0; connect(); } });
    window.addEventListener('offline', () => { if (S.inConsole && !S.wsReady) setConn('offline'); });
  }

  function boot() {
    LANG = pickLang(navigator.language);
    applyStaticI18n();
    bindEvents();
    const tok = readToken();
    if (tok) signIn(tok); else showSignIn('');
  }

  boot();
})();
