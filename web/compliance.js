'use strict';
/* wealthdesk compliance review: search, transcripts, turn replay, review, labels, exports. */
(() => {
  const I18N = {
    en: {
      signinTitle: 'Sign in to compliance review', tokenInvalid: 'This token could not be read. Check that you pasted all of it.',
      tokenExpired: 'Your session has expired. Please sign in again.',
      wrongRole: 'This console is for compliance officers; the token you used is for the role “{role}”.',
      found: '{n} conversations', foundMore: '{n} conversations shown; more match', none: 'No conversation matches.',
      searching: 'Searching…', messages: '{n} messages', reviewed: 'Reviewed', unreviewed: 'Not reviewed', onHold: 'Legal hold',
      exportJsonl: 'Export (JSONL)', printable: 'Printable transcript', exporting: 'Exporting…',
      exported: 'Exported {entries} archive entries in {chains} chains, signed checkpoint included.',
      exportCut: 'The export ended early: the file is incomplete.',
      turnDetails: 'Replay', replayTitle: 'Replay of turn {kind} (message #{seq})', input: 'Client message', redacted: 'As the bot saw it (identifiers masked)',
      guardrails: 'Guardrail decisions', noDecisions: 'No rule fired.', chunks: 'Retrieved sources', promptSent: 'Prompt as sent',
      rawOutput: 'Raw model output', finalText: 'Final reply', model: 'Model', blocked: 'Blocked by {rule}', notRecorded: 'not recorded',
      offline: 'offline writer (no model)', correct: 'Correct', falsePositive: 'False positive', missed: 'Missed rule…', labelled: 'Labelled {rule}: {label}',
      reviewNote: 'Review note', markReviewed: 'Mark reviewed', addNote: 'Save', noteSaved: 'Saved.', history: 'Handoffs',
      reviews: 'Review notes', labels: 'Guardrail labels', ruleHits: 'Guardrail rule hits', handoffs: 'Handoffs by reason',
      dashSummary: '{c} conversations active, {r} reviewed', when: 'When', who: 'Who', what: 'What', subject: 'Subject',
      marks_risk_disclosure: 'Risk disclosure', marks_refusal: 'Refused', marks_handoff: 'Handoff', marks_products: 'Products', marks_question: 'Questionnaire',
      role_client: 'Client', role_bot: 'Bot', role_advisor: 'Advisor', role_system: 'System', close: 'Close', error: 'Error: {msg}',
    },
    'zh-CN': {
      console: '合规审查', skip: '跳到结果', tabSearch: '检索', tabDashboard: '统计', tabAudit: '访问记录', language: '语言', signOut: '退出',
      signinTitle: '登录合规审查', signinHelp: '请粘贴银行身份服务签发给您的访问令牌。', tokenLabel: '访问令牌', signIn: '登录',
      tokenInvalid: '无法读取该令牌，请确认已完整粘贴。', tokenExpired: '会话已过期，请重新登录。', wrongRole: '此控制台仅供合规人员使用；您的令牌角色为“{role}”。',
      from: '开始日期', to: '结束日期', text: '全文（中文或英文）', client: '客户', advisor: '顾问', product: '产品', level: '风险等级', rule: '合规规则',
      reason: '转人工原因', reviewedFilter: '审查状态', any: '全部', notReviewed: '未审查', reviewedYes: '已审查', search: '检索', exportResults: '导出结果（JSONL）',
      results: '会话', transcript: '会话记录', pickOne: '请从结果中打开一个会话。', more: '更多', bucket: '粒度', day: '天', hour: '小时', show: '显示', actor: '人员',
      found: '{n} 个会话', foundMore: '已显示 {n} 个会话，还有更多', none: '没有符合条件的会话。', searching: '检索中…', messages: '{n} 条消息',
      reviewed: '已审查', unreviewed: '未审查', onHold: '诉讼保全', exportJsonl: '导出（JSONL）', printable: '打印版会话记录', exporting: '导出中…',
      exported: '已导出 {chains} 条链中的 {entries} 条归档记录，含签名检查点。', exportCut: '导出提前结束：文件不完整。',
      turnDetails: '回放', replayTitle: '回放：{kind}（消息 #{seq}）', input: '客户消息', redacted: '机器人所见（已遮盖身份信息）', guardrails: '合规规则判定',
      noDecisions: '没有规则触发。', chunks: '检索到的资料', promptSent: '发送给模型的提示', rawOutput: '模型原始输出', finalText: '最终回复', model: '模型',
      blocked: '被 {rule} 拦截', notRecorded: '未记录', offline: '离线撰写（无模型）', correct: '正确', falsePositive: '误报', missed: '漏报规则…',
      labelled: '已标注 {rule}：{label}', reviewNote: '审查备注', markReviewed: '标记为已审查', addNote: '保存', noteSaved: '已保存。', history: '转人工记录',
      reviews: '审查备注', labels: '规则标注', ruleHits: '合规规则触发', handoffs: '转人工原因', dashSummary: '{c} 个活跃会话，{r} 个已审查',
      when: '时间', who: '人员', what: '操作', subject: '对象', marks_risk_disclosure: '风险揭示', marks_refusal: '已拒绝', marks_handoff: '转人工',
      marks_products: '产品', marks_question: '问卷', role_client: '客户', role_bot: '机器人', role_advisor: '顾问', role_system: '系统', close: '关闭', error: '错误：{msg}',
    },
  };
  const TOKEN_KEY = 'wealthdesk.compliance.token';
  let LANG = 'en';
  const S = { token: null, next: null, params: null, open: null };

  const $ = (id) => document.getElementById(id);
  function t(key, vars) {
    const text = (I18N[LANG] && I18N[LANG][key]) || I18N.en[key] || key;
    return text.replace(/\{(\w+)\}/g, (_, k) => (vars && vars[k] != null ? vars[k] : ''));
  }
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v == null || v === false) continue;
      if (k === 'class') node.className = v;
      else if (k === 'text') node.textContent = String(v);
      else if (k === 'data') for (const [dk, dv] of Object.entries(v)) node.dataset[dk] = dv;
      else if (k.startsWith('on') && typeof v === 'function') node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v === true ? '' : String(v));
    }
    for (const c of children.flat()) {
      if (c == null || c === false) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }
  function applyStaticI18n() {
    document.documentElement.lang = LANG;
    for (const node of document.querySelectorAll('[data-i18n]')) {
      const key = node.dataset.i18n;
      if (!node.dataset.en) node.dataset.en = node.textContent;
      node.textContent = LANG === 'en' ? node.dataset.en : (I18N[LANG][key] || node.dataset.en);
    }
    $('lang').value = LANG;
  }
  function toast(text) {
    const box = $('toast');
    box.textContent = text;
    box.hidden = false;
    clearTimeout(toast.timer);
    toast.timer = setTimeout(() => { box.hidden = true; }, 4000);
  }

  // ---------------------------------------------------------------- API
  async function api(method, path, body) {
    const res = await fetch(path, {
      method,
      headers: { Authorization: `Bearer ${S.token}`, ...(body ? { 'Content-Type': 'application/json' } : {}) },
      body: body ? JSON.stringify(body) : undefined,
    });
    if (!res.ok) {
      let err = { error: 'http_' + res.status, message: res.statusText };
      try { err = await res.json(); } catch { /* not JSON */ }
      const e = new Error(err.message || err.error);
      e.status = res.status;
      e.code = err.error;
      if (res.status === 401) signOut(t('tokenExpired'));
      throw e;
    }
    return res;
  }
  const getJson = async (path) => (await api('GET', path)).json();
  const query = (params) => new URLSearchParams(Object.entries(params).filter(([, v]) => v !== '' && v != null)).toString();

  // ---------------------------------------------------------------- sign-in
  function decodeJwt(tok) {
    try {
      const b64 = tok.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
      const bin = atob(b64.padEnd(Math.ceil(b64.length / 4) * 4, '='));
      return JSON.parse(new TextDecoder().decode(Uint8Array.from(bin, (c) => c.charCodeAt(0))));
    } catch {
      return null;
    }
  }
  function initialToken() {
    const m = /(?:^#|&)token=([^&]+)/.exec(location.hash);
    if (m) {
      const tok = decodeURIComponent(m[1]);
      history.replaceState(null, '', location.pathname + location.search);
      sessionStorage.setItem(TOKEN_KEY, tok);
      return tok;
    }
    return sessionStorage.getItem(TOKEN_KEY);
  }
  function showSignIn(message) {
    $('main').hidden = true;
    $('tabs').hidden = true;
    $('session-bar').hidden = true;
    $('signin-view').hidden = false;
    $('signin-message').textContent = message || '';
    $('token-input').focus();
  }
  function signIn(tok) {
    const claims = decodeJwt(tok || '');
    if (!claims) return showSignIn(t('tokenInvalid'));
    if (claims.role !== 'compliance') return showSignIn(t('wrongRole', { role: claims.role || '?' }));
    if (claims.exp && claims.exp * 1000 < Date.now()) return showSignIn(t('tokenExpired'));
    S.token = tok;
    sessionStorage.setItem(TOKEN_KEY, tok);
    LANG = localStorage.getItem('wealthdesk.compliance.lang') || (/^zh/i.test(claims.lang || navigator.language) ? 'zh-CN' : 'en');
    applyStaticI18n();
    $('officer').textContent = claims.name || claims.sub;
    $('signin-view').hidden = true;
    $('main').hidden = false;
    $('tabs').hidden = false;
    $('session-bar').hidden = false;
    const today = new Date();
    const weekAgo = new Date(Date.now() - 6 * 86400000);
    for (const [from, to] of [['f-from', 'f-to'], ['d-from', 'd-to'], ['a-from', 'a-to']]) {
      if (!$(from).value) $(from).value = weekAgo.toISOString().slice(0, 10);
      if (!$(to).value) $(to).value = today.toISOString().slice(0, 10);
    }
  }
  function signOut(message) {
    sessionStorage.removeItem(TOKEN_KEY);
    S.token = null;
    showSignIn(message);
  }

  // ---------------------------------------------------------------- search
  function searchParams() {
    const form = $('search-form');
    const p = {};
    for (const field of form.elements) if (field.name) p[field.name] = field.value.trim();
    return p;
  }
  async function runSearch(more) {
    const status = $('search-status');
    if (!more) {
      S.params = searchParams();
      S.next = null;
      $('results').replaceChildren();
    }
    status.textContent = t('searching');
    status.classList.remove('error');
    try {
      const page = await getJson('/v1/compliance/search?' + query({ ...S.params, cursor: more ? S.next : '' }));
      for (const c of page.conversations) $('results').append(resultItem(c));
      S.next = page.next || null;
      $('more').hidden = !S.next;
      const n = $('results').children.length;
      status.textContent = n ? t(S.next ? 'foundMore' : 'found', { n }) : t('none');
    } catch (e) {
      status.textContent = t('error', { msg: e.message });
      status.classList.add('error');
    }
  }
  function chips(list, cls) {
    return (list || []).map((v) => el('span', { class: `chip ${cls}`, text: v }));
  }
  function resultItem(c) {
    const open = el('button', { type: 'button', class: 'result-open', data: { testid: 'result', id: c.id }, onclick: () => openTranscript(c.id) },
      el('span', { class: 'result-title' }, `${c.client_name} · ${c.created_at.slice(0, 16).replace('T', ' ')}`),
      el('span', { class: 'result-meta' }, t('messages', { n: c.messages }), ' · ', c.language, ' · ', c.mode));
    return el('li', { class: 'result' }, open,
      el('div', { class: 'chips' }, chips(c.levels, 'level'), chips(c.rules, 'rule'), chips(c.handoff_reasons, 'reason'),
        el('span', { class: `chip ${c.reviewed ? 'ok' : 'todo'}`, text: c.reviewed ? t('reviewed') : t('unreviewed') }),
        c.on_hold ? el('span', { class: 'chip hold', text: t('onHold') }) : null),
      (c.hits || []).map((h) => el('p', { class: 'hit', data: { testid: 'hit' } }, `#${h.seq} `, highlight(h.text))));
  }
  function highlight(text) {
    const q = (S.params && S.params.q) || '';
    const words = q.split(/\s+/).filter(Boolean);
    if (!words.length) return [text];
    const lower = text.toLowerCase();
    const out = [];
    let i = 0;
    while (i < text.length) {
      let hit = null;
      for (const w of words) if (lower.startsWith(w.toLowerCase(), i)) { hit = w; break; }
      if (hit) { out.push(el('mark', { text: text.slice(i, i + hit.length) })); i += hit.length; } else { out.push(text[i]); i += 1; }
    }
    return out;
  }

  // ---------------------------------------------------------------- transcript
  async function openTranscript(id) {
    const body = $('transcript-body');
    $('transcript-empty').hidden = true;
    body.replaceChildren(el('p', { class: 'muted', text: t('searching') }));
    try {
      const tr = await getJson(`/v1/compliance/conversations/${encodeURIComponent(id)}`);
      S.open = tr;
      renderTranscript(tr);
      $('transcript').focus();
    } catch (e) {
      body.replaceChildren(el('p', { class: 'error', text: t('error', { msg: e.message }) }));
    }
  }
  function renderTranscript(tr) {
    const c = tr.conversation;
    const turnsBySeq = new Map();
    for (const turn of tr.turns) {
      if (!turnsBySeq.has(turn.trigger_seq)) turnsBySeq.set(turn.trigger_seq, []);
      turnsBySeq.get(turn.trigger_seq).push(turn);
    }
    const header = el('div', { class: 'transcript-head' },
      el('p', { class: 'conv-title', data: { testid: 'transcript-title' } }, `${c.client_name} (${c.client_id})`),
      el('p', { class: 'muted' }, `${c.id} · ${c.created_at} → ${c.updated_at}`),
      el('div', { class: 'chips' }, chips(c.levels, 'level'), chips(c.products, 'product'), chips(c.advisors, 'advisor'),
        el('span', { class: `chip ${c.reviewed ? 'ok' : 'todo'}`, data: { testid: 'reviewed-state' }, text: c.reviewed ? t('reviewed') : t('unreviewed') }),
        c.on_hold ? el('span', { class: 'chip hold', text: t('onHold') }) : null),
      el('div', { class: 'actions' },
        el('button', { type: 'button', class: 'btn', data: { testid: 'export-jsonl' }, onclick: () => exportJsonl(`/v1/compliance/conversations/${c.id}/export`, `conversation-${c.id}.jsonl`, $('export-status')) }, t('exportJsonl')),
        el('button', { type: 'button', class: 'btn', data: { testid: 'export-html' }, onclick: () => printable(c.id) }, t('printable'))),
      el('p', { class: 'status', id: 'export-status', role: 'status', data: { testid: 'export-status' } }));
    const list = el('ol', { class: 'messages', data: { testid: 'messages' } }, tr.messages.map((m) => {
      const turns = m.sender_role === 'client' ? (turnsBySeq.get(m.seq) || []) : [];
      return el('li', { class: `msg from-${m.sender_role} ${m.marks.map((k) => 'mark-' + k).join(' ')}`, data: { testid: 'message', seq: String(m.seq) } },
        el('div', { class: 'msg-meta' }, `#${m.seq} · ${t('role_' + m.sender_role)} ${m.sender_role === 'advisor' ? '(' + m.sender_id + ')' : ''} · ${m.at.slice(11, 19)}`,
          m.marks.map((k) => el('span', { class: `tag tag-${k}`, text: t('marks_' + k) }))),
        el('p', { class: 'msg-text', text: m.text }),
        turns.length ? el('div', { class: 'turns' }, turns.map((turn) => el('button', {
          type: 'button', class: 'btn btn-small' + (turn.decisions.length ? ' has-rules' : ''), data: { testid: 'replay', turn: turn.id },
          onclick: () => openReplay(c.id, turn.id),
        }, `${t('turnDetails')}: ${turn.kind}${turn.decisions.length ? ' · ' + [...new Set(turn.decisions.map((d) => d.rule))].join(', ') : ''}`))) : null);
    }));
    const events = el('ul', { class: 'events' }, tr.handoff_events.map((e) => el('li', {}, `${e.at.slice(0, 19).replace('T', ' ')} · ${e.event} · ${e.actor_id}`)));
    const reviews = el('ul', { class: 'events', data: { testid: 'reviews' } }, tr.reviews.map((r) => el('li', {}, `${new Date(r.at).toISOString().slice(0, 19).replace('T', ' ')} · ${r.actor_id}${r.reviewed ? ' ✓' : ''} — ${r.note}`)));
    const labels = el('ul', { class: 'events' }, tr.labels.map((l) => el('li', {}, `${l.rule_id}: ${l.label} (${l.direction}) — ${l.note}`)));
    const form = el('form', { class: 'review-form', data: { testid: 'review-form' } },
      el('label', { for: 'review-note', text: t('reviewNote') }),
      el('textarea', { id: 'review-note', rows: '2', data: { testid: 'review-note' } }),
      el('label', { class: 'check' }, el('input', { type: 'checkbox', id: 'review-mark', data: { testid: 'review-mark' } }), t('markReviewed')),
      el('button', { type: 'submit', class: 'btn btn-primary', data: { testid: 'review-save' } }, t('addNote')));
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      try {
        await api('POST', `/v1/compliance/conversations/${c.id}/reviews`, { note: $('review-note').value, reviewed: $('review-mark').checked });
        toast(t('noteSaved'));
        openTranscript(c.id);
      } catch (e) {
        toast(t('error', { msg: e.message }));
      }
    });
    const orNone = (list) => (list.children.length ? list : el('p', { class: 'muted', text: '—' }));
    $('transcript-body').replaceChildren(header, list,
      el('h3', { text: t('history') }), orNone(events), el('h3', { text: t('reviews') }), orNone(reviews), el('h3', { text: t('labels') }), orNone(labels), form,
      el('section', { class: 'replay', id: 'replay', data: { testid: 'replay-panel' }, hidden: true, tabindex: '-1', 'aria-labelledby': 'replay-heading' }));
  }

  function block(title, content, testid) {
    return el('section', { class: 'replay-block', data: testid ? { testid } : {} }, el('h4', { text: title }), content);
  }
  function pre(text) {
    return el('pre', { class: 'pre', text: text == null || text === '' ? t('notRecorded') : text });
  }
  async function openReplay(conversation, turn) {
    const panel = $('replay');
    panel.hidden = false;
    panel.replaceChildren(el('p', { class: 'muted', text: t('searching') }));
    let r;
    try {
      r = await getJson(`/v1/compliance/conversations/${conversation}/turns/${encodeURIComponent(turn)}`);
    } catch (e) {
      panel.replaceChildren(el('p', { class: 'error', text: t('error', { msg: e.message }) }));
      return;
    }
    const decisions = r.guardrails.length ? el('ul', { class: 'decisions' }, r.guardrails.map((d) => el('li', { data: { testid: 'decision' } },
      el('code', { text: d.rule }), ` ${d.direction} · ${typeof d.action === 'string' ? d.action : JSON.stringify(d.action)} · “${d.span}” `,
      el('button', { type: 'button', class: 'btn btn-small', onclick: () => label(conversation, turn, d.rule, 'correct') }, t('correct')),
      el('button', { type: 'button', class: 'btn btn-small', data: { testid: 'label-fp' }, onclick: () => label(conversation, turn, d.rule, 'false_positive') }, t('falsePositive'))))) : el('p', { class: 'muted', text: t('noDecisions') });
    const missedInput = el('input', { type: 'text', placeholder: 'OUT-…', 'aria-label': t('missed'), class: 'missed-input' });
    const missed = el('div', { class: 'missed' }, missedInput,
      el('button', { type: 'button', class: 'btn btn-small', onclick: () => missedInput.value.trim() && label(conversation, turn, missedInput.value.trim(), 'missed') }, t('missed')));
    const chunks = el('ol', { class: 'chunks' }, r.chunks.map((c) => el('li', { data: { testid: 'chunk' } },
      el('p', { class: 'muted' }, `${c.doc_id} · ${c.section} · v${c.version_hash.slice(0, 12)} · ${c.score.toFixed(3)}`), pre(c.text))));
    const prompt = Array.isArray(r.prompt_sent) ? r.prompt_sent.map((m) => `[${m.role}]\n${m.content}`).join('\n\n') : null;
    panel.replaceChildren(
      el('div', { class: 'replay-head' }, el('h3', { id: 'replay-heading', text: t('replayTitle', { kind: r.kind, seq: r.trigger_seq }) }),
        el('button', { type: 'button', class: 'btn btn-small', onclick: () => { panel.hidden = true; } }, t('close'))),
      block(t('input'), pre(r.input), 'replay-input'),
      block(t('redacted'), pre(r.input_redacted), 'replay-redacted'),
      block(t('guardrails'), [decisions, missed, r.blocked ? el('p', { class: 'error', text: t('blocked', { rule: r.blocked }) }) : null], 'replay-guardrails'),
      block(t('chunks'), chunks, 'replay-chunks'),
      block(t('model'), el('p', { text: r.model ? `${r.model} ${JSON.stringify(r.parameters)}` : t('offline') })),
      block(t('promptSent'), pre(prompt), 'replay-prompt'),
      block(t('rawOutput'), pre(r.raw_output), 'replay-raw'),
      block(t('finalText'), pre(r.output || (r.replies || []).map((m) => m.text).join('\n\n')), 'replay-output'));
    panel.focus();
    panel.scrollIntoView({ block: 'start' });
  }
  async function label(conversation, turn, rule, value) {
    try {
      await api('POST', `/v1/compliance/conversations/${conversation}/labels`, { turn_id: turn, rule_id: rule, label: value });
      toast(t('labelled', { rule, label: value }));
    } catch (e) {
      toast(t('error', { msg: e.message }));
    }
  }

  // ---------------------------------------------------------------- exports
  async function exportJsonl(path, filename, status) {
    status.textContent = t('exporting');
    try {
      const res = await api('GET', path);
      const text = await res.text();
      const lines = text.trim().split('\n');
      const last = JSON.parse(lines[lines.length - 1] || '{}');
      if (last.type !== 'end') {
        status.textContent = t('exportCut');
      } else {
        status.textContent = t('exported', { entries: last.entries, chains: last.chains });
      }
      download(new Blob([text], { type: 'application/x-ndjson' }), filename);
    } catch (e) {
      status.textContent = t('error', { msg: e.message });
    }
  }
  async function printable(id) {
    try {
      const res = await api('GET', `/v1/compliance/conversations/${id}/export?format=html`);
      const blob = new Blob([await res.text()], { type: 'text/html' });
      const url = URL.createObjectURL(blob);
      const win = window.open(url, '_blank', 'noopener');
      if (!win) download(blob, `conversation-${id}.html`);
      setTimeout(() => URL.revokeObjectURL(url), 60000);
    } catch (e) {
      toast(t('error', { msg: e.message }));
    }
  }
  function download(blob, filename) {
    const a = el('a', { href: URL.createObjectURL(blob), download: filename });
    document.body.append(a);
    a.click();
    a.remove();
  }

  // ---------------------------------------------------------------- dashboard and audit
  function bars(title, series, buckets) {
    const max = Math.max(1, ...series.map((s) => s.total));
    return el('section', { class: 'card' }, el('h3', { text: title }),
      series.length ? el('table', { class: 'grid' }, el('tbody', {}, series.map((s) => el('tr', {},
        el('th', { scope: 'row', text: s.key }),
        el('td', { class: 'bar-cell' }, el('span', { class: 'bar', style: `width:${(100 * s.total) / max}%` }), ` ${s.total}`),
        el('td', { class: 'spark', title: buckets.map((b, i) => `${b.slice(0, 13)}: ${s.counts[i]}`).join('\n') },
          s.counts.map((n) => el('span', { class: 'tick', style: `height:${Math.max(2, (24 * n) / Math.max(1, ...s.counts))}px` }))))))) : el('p', { class: 'muted', text: t('none') }));
  }
  async function showDashboard() {
    const box = $('dashboard');
    try {
      const d = await getJson('/v1/compliance/dashboard?' + query({ from: $('d-from').value, to: $('d-to').value, bucket: $('d-bucket').value }));
      box.replaceChildren(el('p', { class: 'status', text: t('dashSummary', { c: d.conversations, r: d.reviewed }) }),
        bars(t('ruleHits'), d.rule_hits, d.buckets), bars(t('handoffs'), d.handoffs, d.buckets));
    } catch (e) {
      box.replaceChildren(el('p', { class: 'error', text: t('error', { msg: e.message }) }));
    }
  }
  async function showAudit() {
    const table = $('audit');
    try {
      const a = await getJson('/v1/compliance/audit?' + query({ from: $('a-from').value, to: $('a-to').value, actor: $('a-actor').value.trim() }));
      table.replaceChildren(el('thead', {}, el('tr', {}, [t('when'), t('who'), t('what'), t('subject')].map((h) => el('th', { scope: 'col', text: h })))),
        el('tbody', {}, a.entries.map((e) => el('tr', { data: { testid: 'audit-row' } }, el('td', { text: e.at.slice(0, 19).replace('T', ' ') }),
          el('td', { text: `${e.actor_id} (${e.actor_role})` }), el('td', { text: e.action }), el('td', { text: e.subject || '' })))));
    } catch (e) {
      table.replaceChildren(el('caption', { class: 'error', text: t('error', { msg: e.message }) }));
    }
  }
  function showTab(name) {
    for (const b of document.querySelectorAll('.tab')) {
      if (b.dataset.tab === name) b.setAttribute('aria-current', 'page'); else b.removeAttribute('aria-current');
    }
    for (const v of ['search', 'dashboard', 'audit']) $('view-' + v).hidden = v !== name;
    if (name === 'dashboard') showDashboard();
    if (name === 'audit') showAudit();
  }

  // ---------------------------------------------------------------- wiring
  document.addEventListener('DOMContentLoaded', () => {
    $('signin-form').addEventListener('submit', (ev) => { ev.preventDefault(); signIn($('token-input').value.trim()); });
    $('sign-out').addEventListener('click', () => signOut());
    $('search-form').addEventListener('submit', (ev) => { ev.preventDefault(); runSearch(false); });
    $('more').addEventListener('click', () => runSearch(true));
    $('export-search').addEventListener('click', () => {
      const p = searchParams();
      exportJsonl('/v1/compliance/export?' + query(p), 'search.jsonl', $('search-status'));
    });
    $('dash-form').addEventListener('submit', (ev) => { ev.preventDefault(); showDashboard(); });
    $('audit-form').addEventListener('submit', (ev) => { ev.preventDefault(); showAudit(); });
    for (const b of document.querySelectorAll('.tab')) b.addEventListener('click', () => showTab(b.dataset.tab));
    $('lang').addEventListener('change', () => {
      LANG = $('lang').value;
      localStorage.setItem('wealthdesk.compliance.lang', LANG);
      applyStaticI18n();
      if (S.open) renderTranscript(S.open);
    });
    const tok = initialToken();
    if (tok) signIn(tok); else showSignIn('');
  });
})();
